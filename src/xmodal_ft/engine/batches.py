"""The runs' training batches: each run's seeded order, and the runs' batches as one batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from xmodal_ft.tasks.base import Split

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # x, lengths, y


def shuffled(
    split: Split, batch_size: int, seed: int, skip: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """Endless (epoch, example indices) pairs: a seeded permutation per epoch, dropping the last
    partial batch. The first `skip` batches are passed over (to resume a run)."""
    if len(split) < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(split)} training examples")
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(split) // batch_size
    epoch = 0
    while True:
        order = torch.randperm(len(split), generator=generator)
        for i, start in enumerate(range(0, per_epoch * batch_size, batch_size)):
            if epoch * per_epoch + i >= skip:
                yield epoch, order[start : start + batch_size]
        epoch += 1


def of_runs(split: Split, idxs: list[torch.Tensor], device: torch.device) -> Batch:
    """The runs' batches (rows `idxs[r]` of `split`) as one run-major batch: one gather where
    sequences have one length, else each run's batch trimmed as alone, then padded."""
    if len(idxs) == 1 or split.lengths is None:
        return rows(split, idxs[0] if len(idxs) == 1 else torch.cat(idxs), device)
    return stack([rows(split, idx, device) for idx in idxs])


def rows(split: Split, idx: torch.Tensor, device: torch.device) -> Batch:
    """Rows `idx` of `split` on `device`, trimmed to the longest sequence among them."""
    x, y = split.x[idx], split.y[idx]
    lengths = None
    if split.lengths is not None:
        lengths = split.lengths[idx]
        x = x[:, : int(lengths.max())]
        lengths = lengths.to(device, non_blocking=True)
    if not x.is_floating_point():
        x = x.long()
    return x.to(device, non_blocking=True), lengths, y.to(device, non_blocking=True)


def stack(batches: list[Batch]) -> Batch:
    """Runs' batches as one run-major batch, padded to the longest sequence among them."""
    if len(batches) == 1:
        return batches[0]
    xs, lengths, ys = zip(*batches, strict=True)
    width = max(x.shape[1] for x in xs) if xs[0].dim() > 1 else 0
    if lengths[0] is not None:
        xs = [F.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1])) for x in xs]
    x = torch.cat(xs)
    length = None if lengths[0] is None else torch.cat(lengths)
    y = None if ys[0] is None else torch.cat(ys)
    return x, length, y

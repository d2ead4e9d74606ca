"""What runs of a stack can share: frozen weights equal in every run are stored once, and a
module's parameters need one block per distinct value (`value_blocks`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values (the same storage, or equal elements)."""
    return a.data_ptr() == b.data_ptr() or torch.equal(a, b)


@torch.no_grad()
def share_frozen(model: nn.Module, seen: Sequence[nn.Module]) -> None:
    """Make `model`'s frozen parameters views of equal ones in `seen` models (frees the copies).

    Called as each run's model is built, so R pretrained backbones never sit in memory at once.
    """
    for other in seen:
        mine, theirs = dict(model.named_parameters()), dict(other.named_parameters())
        for name, param in mine.items():
            ref = theirs.get(name)
            if (
                not param.requires_grad
                and ref is not None
                and param.data_ptr() != ref.data_ptr()
                and param.shape == ref.shape
                and torch.equal(param, ref)
            ):
                param.data = ref.data


def first_equal(run_models: Sequence[nn.Module]) -> list[int]:
    """For each run, the first run whose parameters all equal its own (itself at least)."""
    params = [list(m.parameters()) for m in run_models]

    def equal(a: list[nn.Parameter], b: list[nn.Parameter]) -> bool:
        return all(same_values(x, y) for x, y in zip(a, b, strict=True))

    return [next(o for o in range(r + 1) if equal(params[o], own)) for r, own in enumerate(params)]


def value_blocks(values: list[list[nn.Parameter]]) -> int:
    """How many distinct blocks a module's parameters need (`values[p][r]`: its parameter p in
    run r): 1 when frozen and equal in every run; the number of distinct frozen values when runs
    with equal values are contiguous and equally many; else one per run."""
    runs = len(values[0])
    if any(per_run[0].requires_grad for per_run in values):
        return runs
    labels: list[int] = []
    firsts: list[int] = []  # the first run of each distinct value
    for run in range(runs):
        match = next((i for i, f in enumerate(firsts) if _all_equal(values, run, f)), None)
        if match is None:
            firsts.append(run)
        labels.append(len(firsts) - 1 if match is None else match)
    size = runs // len(firsts)
    contiguous = labels == [b for b in range(len(firsts)) for _ in range(size)]
    return len(firsts) if contiguous else runs


def _all_equal(values: list[list[nn.Parameter]], run: int, other: int) -> bool:
    return all(same_values(p[run], p[other]) for p in values)

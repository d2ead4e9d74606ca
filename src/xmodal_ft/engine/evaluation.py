"""Scoring runs on a split: one run's model, or R runs of a stack in one batched pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from xmodal_ft import metrics
from xmodal_ft.engine import batches
from xmodal_ft.engine.device import autocast
from xmodal_ft.engine.plan import FitConfig
from xmodal_ft.tasks.base import Split

if TYPE_CHECKING:
    from xmodal_ft.engine.layout import Layout


def evaluate(
    model: nn.Module,
    split: Split,
    names: tuple[str, ...],
    batch_size: int,
) -> dict[str, float]:
    """Metrics of one run's `model` on a whole split, in eval mode."""
    return _evaluate(model, 1, split, names, batch_size, None, None)[0]


def evaluate_runs(
    model: nn.Module,
    runs: int,
    split: Split,
    names: tuple[str, ...],
    cfg: FitConfig,
    desc: str,
    on_batch: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """Metrics of each of the `runs` runs of `model` on a whole split, in one batched pass;
    `on_batch()` after each batch (the runs make progress)."""
    progress = desc if cfg.progress else None
    return _evaluate(model, runs, split, names, cfg.eval_batch_size, progress, on_batch)


def validation_scores(
    layout: Layout,
    step: int,
    val: Split,
    names: tuple[str, ...],
    cfg: FitConfig,
    on_batch: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """The validation scores of each run of `layout`. At step 0, runs whose weights are equal
    (runs of one seed: `layout.twins()`) are scored once, by one run's own model (which
    computes as its lone run)."""
    runs = len(layout.runs)
    if step > 0 or runs == 1:
        return evaluate_runs(layout.model, runs, val, names, cfg, "val", on_batch)
    twins = layout.twins()
    models = [run.model for run in layout.runs]
    scores = {r: evaluate_runs(models[r], 1, val, names, cfg, "val", on_batch) for r in set(twins)}
    return [scores[r][0] for r in twins]


@torch.inference_mode()
def _evaluate(
    model: nn.Module,
    runs: int,
    split: Split,
    names: tuple[str, ...],
    batch_size: int,
    progress: str | None,
    on_batch: Callable[[], None] | None,
) -> list[dict[str, float]]:
    """Each chunk of `batch_size` examples goes through the model once per run, as one batch of
    runs · chunk rows (run-major)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds = []
    starts = range(0, len(split), batch_size)
    for start in tqdm(starts, desc=progress, disable=progress is None, leave=False):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        x, lengths, _ = batches.rows(split, idx, device)
        if runs > 1:
            x, lengths, _ = batches.stack([(x, lengths, None)] * runs)
        with autocast(device):
            logits = model(x, lengths)
        preds.append(logits.argmax(dim=-1).view(runs, -1).cpu())
        if on_batch is not None:
            on_batch()
    model.train(was_training)
    by_run = torch.cat(preds, dim=1)
    return [metrics.compute(names, pred, split.y) for pred in by_run]

"""The one line a run (or a lockstep group) announces itself with."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xmodal_ft import labels, schemes
from xmodal_ft.engine.device import autocast
from xmodal_ft.recipe.checks import plain
from xmodal_ft.runspec import RunSpec
from xmodal_ft.tasks.base import TaskData


def banner(
    specs: Sequence[RunSpec],
    data: TaskData,
    params: dict[str, int],
    device: torch.device,
    max_steps: int,
) -> str:
    """Model and variant with the trainable parameters, scheme, data sizes, budget, device and
    precision, LRs and seeds."""
    cfg = specs[0].cfg
    weights = f"pretrained {cfg.model.path}" if cfg.variant.pretrained else "random init"
    trainable = f"{params['trainable']:,} of {params['total']:,} parameters trainable"
    share = f"{100 * params['trainable'] / params['total']:.2f}%"
    scheme = [labels.optimizer_name(schemes.SchemeConfig(**plain(cfg.scheme)))]
    if cfg.scheme.adapter != "none":
        scheme.append(f"adapter {cfg.scheme.adapter}: {params.get('adapter', 0):,} parameters")
    if cfg.scheme.schedule != "constant":
        scheme.append(f"schedule {cfg.scheme.schedule}")
    val = f"{len(data.val):,} val"
    if cfg.val_subset is not None and cfg.val_subset < len(data.val):
        val += f" ({cfg.val_subset:,} scored per pass)"
    budget = f"{max_steps:,} steps of batch {cfg.batch_size}"
    if cfg.max_epochs is not None:
        budget += f" (max_epochs={cfg.max_epochs})"
    precision = "fp32"
    if isinstance(cast := autocast(device), torch.autocast):
        precision = f"{str(cast.fast_dtype).removeprefix('torch.')} autocast"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precision += ", TF32 matmuls"
    lrs = sorted({float(spec.cfg.lr) for spec in specs})
    seeds = sorted({int(spec.cfg.seed) for spec in specs})
    runs = f"lr {', '.join(f'{lr:g}' for lr in lrs)}; seed {', '.join(map(str, seeds))}"
    if len(specs) > 1:
        runs = f"{len(specs)} runs at once ({runs})"
    return (
        f"model {cfg.model.name} ({weights}), variant {cfg.variant.name}: {trainable} ({share}) | "
        f"scheme {cfg.scheme.name} ({', '.join(scheme)}) | task {data.spec.name}: "
        f"{len(data.train):,} train, {val}, {len(data.test):,} test | {budget} | "
        f"device {device}, {precision} | {runs}"
    )

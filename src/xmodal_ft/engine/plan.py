"""What the loop follows and what it returns: a run's training plan (schemes fill it), the loop's
settings, and a run's result."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    batch_size: int = 8
    max_steps: int = 1000
    eval_every: int = 100  # steps between validation passes
    patience: int | None = None  # evaluations without improvement before stopping; None: never
    grad_clip: float | None = 1.0
    eval_batch_size: int = 64
    val_subset: int | None = None  # examples scored per validation pass (fixed); None: all
    seed: int = 0
    log_every: int = 10
    progress: bool = True
    checkpoint_every: int | None = None  # steps between checkpoints (with a checkpoint path)


@dataclass
class FitResult:
    best_val: dict[str, float]
    best_step: int
    test: dict[str, float]
    steps: int
    stopped_early: bool
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    val_seconds: float = 0.0  # spent in validation passes (shared by lockstep runs)
    pruned_at: int | None = None  # the step a pruner stopped the run at (pruning.Pruner)


def _constant(step: int) -> float:
    return 1.0


def per_example_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of each example (the engine averages each run's)."""
    return F.cross_entropy(logits, y, reduction="none")


@dataclass(frozen=True)
class Unfreeze:
    """`params` stay frozen until epoch `epoch` starts and train from then on."""

    epoch: int
    params: tuple[nn.Parameter, ...]
    name: str = ""


@dataclass
class TrainPlan:
    """How to train one run's model; schemes fill it, the engine follows it.

    `optimizer` holds every parameter that ever trains, in groups with their base LRs;
    `lr_scale(step)` multiplies each group's base LR at that step (the schedule); `unfreeze`
    lists parameters that start frozen and when they join; `loss(logits, y)` gives each
    example's loss. `params` counts parameters for the record (trainable / total / adapter).
    """

    optimizer: torch.optim.Optimizer
    lr_scale: Callable[[int], float] = _constant
    unfreeze: Sequence[Unfreeze] = ()
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = per_example_cross_entropy
    params: dict[str, int] = field(default_factory=dict)


def enter_epoch(plan: TrainPlan, epoch: int, quiet: bool = False) -> None:
    """At the start of `epoch`: each of the plan's late parameters trains iff its time came."""
    if not plan.unfreeze:
        return
    for event in plan.unfreeze:
        for param in event.params:
            param.requires_grad_(epoch >= event.epoch)
    if not quiet:
        names = [e.name for e in plan.unfreeze if epoch >= e.epoch]
        log.info("epoch %d: training groups %s", epoch, ", ".join(names))

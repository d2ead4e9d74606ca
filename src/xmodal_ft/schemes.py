"""Fine-tuning schemes: optimizer over trainable parameters, LR schedule, unfreeze plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SchemeConfig:
    """A scheme group option."""

    name: str = "fixed"


@dataclass
class TrainPlan:
    """What the engine needs from a scheme: an optimizer, an LR multiplier per step, epoch hooks."""

    optimizer: torch.optim.Optimizer
    lr_scale: Callable[[int], float] = lambda step: 1.0
    on_epoch: Callable[[int], None] | None = None


def build(model: nn.Module, cfg: SchemeConfig, lr: float) -> TrainPlan:
    """The optimizer of scheme `cfg.name` over the trainable parameters of `model`."""
    builders = {"fixed": _fixed}
    if cfg.name not in builders:
        raise ValueError(f"unknown scheme {cfg.name!r}; choose one of: {', '.join(builders)}")
    return builders[cfg.name](model, cfg, lr)


def _fixed(model: nn.Module, cfg: SchemeConfig, lr: float) -> TrainPlan:
    """Adam with one learning rate (Lu et al., Rothermel et al.)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return TrainPlan(torch.optim.Adam(params, lr=lr, **fast_kernels(params)))


def fast_kernels(params: list[nn.Parameter]) -> dict[str, bool]:
    """Fused optimizer kernels on CUDA, multi-tensor (foreach) kernels elsewhere."""
    on_cuda = bool(params) and params[0].is_cuda
    return {"fused": True} if on_cuda else {"foreach": True}

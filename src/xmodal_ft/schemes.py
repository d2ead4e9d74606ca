"""Fine-tuning schemes: optimizer and parameter groups, LR schedule, unfreeze plan, adapters.

The four schemes of the fine-tuning survey, each composable with `adapter` (houlsby | none) and
`schedule` (constant | slanted_triangular); `optimizer` (adam | sgd: plain SGD) picks the update
rule of fixed, discriminative and gradual_unfreeze (default adam):
- fixed: one LR (Lu et al., Rothermel et al.: Adam).
- nesterov: SGD with Nesterov momentum (0.9: our inference, the survey gives no value); its
  optimizer is always sgd.
- discriminative: LR of a layer group = lr · decay^(depth from the top) (ULMFiT, decay
  1/2.6; Sun et al. 2019, "How to Fine-Tune BERT for Text Classification").
- gradual_unfreeze: one LR; at epoch e only the top e+1 layer groups train (ULMFiT).
Layer groups come from `layers.layer_groups`: bottom (input layer, embeddings), each layer, top.
A scheme option names its function in `_target_` (conf/scheme/*.yaml), so a scheme of your own is
a function `(model, SchemeConfig, lr) -> (optimizer, unfreeze events)` anywhere importable;
`scheme.adapter` likewise takes `module.function` (`(model, SchemeConfig) -> parameter count`).
Optimizers hold trainable parameters only and use fused kernels (CPU and CUDA; on CPU 3-6x faster
per step than the multi-tensor `foreach` ones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from xmodal_ft import adapters, schedules
from xmodal_ft.config import SchemeConfig
from xmodal_ft.engine import TrainPlan, Unfreeze
from xmodal_ft.errors import UserError, importable
from xmodal_ft.labels import optimizer_name
from xmodal_ft.layers import LayerGroup, layer_groups
from xmodal_ft.variants import count_parameters

log = logging.getLogger(__name__)
# The built-in schemes and adapters: functions of this module (adapters: adapter_<name>), found by
# name when a config names no `_target_` / module path (SchemeConfig("nesterov") in code).
SCHEMES = ("fixed", "nesterov", "discriminative", "gradual_unfreeze")
ADAPTERS = ("none", "houlsby")
OPTIMIZERS = ("adam", "sgd")


class SchemeError(UserError, ValueError):
    """An invalid scheme option; the message names the key to fix."""


Optimizer = tuple[torch.optim.Optimizer, Sequence[Unfreeze]]  # and when late groups join


def build(model: nn.Module, cfg: SchemeConfig, lr: float, total_steps: int = 1) -> TrainPlan:
    """Adapters (if any), then the engine's plan for scheme `cfg.name`: the optimizer over the
    trainable parameters, the LR schedule and (gradual unfreezing) when layer groups join.

    `total_steps` is the run's step budget (the slanted triangular schedule spans it).
    """
    _validate(cfg)
    try:
        lr_scale = schedules.build(cfg.schedule, total_steps, cfg.cut_frac, cfg.ratio)
    except ValueError as err:
        raise SchemeError(str(err)) from err
    adapter_params = _adapter(cfg)(model, cfg)
    optimizer, unfreeze = _scheme(cfg)(model, cfg, lr)
    counts = {**count_parameters(model), "adapter": adapter_params}
    log.debug(
        "scheme %s (optimizer %s, adapter %s, schedule %s): %s of %s parameters trainable "
        "(%.2f%%)", cfg.name, optimizer_name(cfg), cfg.adapter, cfg.schedule,
        f"{counts['trainable']:,}", f"{counts['total']:,}",
        100 * counts["trainable"] / counts["total"],
    )  # fmt: skip
    return TrainPlan(optimizer, lr_scale, unfreeze, params=counts)


def check(cfg: SchemeConfig, model_type: str | None = None) -> None:
    """Check a scheme option before anything is built: names, values, and (given the model's
    type) whether its adapter supports the architecture."""
    _validate(cfg)
    if cfg.adapter == "houlsby" and model_type is not None and model_type not in adapters.SITES:
        raise SchemeError(
            f"scheme.adapter=houlsby does not support model type {model_type!r}; supported: "
            f"{', '.join(adapters.SITES)}: choose such a model or scheme.adapter=none"
        )


def _validate(cfg: SchemeConfig) -> None:
    _scheme(cfg)
    _adapter(cfg)
    if cfg.schedule not in schedules.SCHEDULES:
        raise SchemeError(
            f"unknown scheme.schedule {cfg.schedule!r}; choose one of: "
            f"{', '.join(schedules.SCHEDULES)}"
        )
    if not cfg.decay > 0:
        raise SchemeError(f"scheme.decay={cfg.decay} must be > 0 (ULMFiT: 1/2.6 ≈ 0.385)")
    if not 0 <= cfg.momentum < 1:
        raise SchemeError(f"scheme.momentum={cfg.momentum} must lie in [0, 1) (default 0.9)")
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        raise SchemeError(
            f"unknown scheme.optimizer {cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
        )
    if cfg.name == "nesterov" and cfg.optimizer not in (None, "sgd"):
        raise SchemeError(
            f"scheme nesterov is SGD with Nesterov momentum, not {cfg.optimizer}: set "
            f"scheme.optimizer=sgd, or scheme=fixed scheme.optimizer={cfg.optimizer}"
        )


def _scheme(cfg: SchemeConfig) -> Callable[[nn.Module, SchemeConfig, float], Optimizer]:
    """The function of `scheme._target_`, else the built-in scheme called `name`."""
    if cfg._target_:
        return importable(cfg._target_, "scheme._target_", SchemeError)
    if cfg.name not in SCHEMES:
        raise SchemeError(
            f"unknown scheme {cfg.name!r}; choose one of: {', '.join(SCHEMES)}, or set "
            "scheme._target_=<module.function> (docs/extending.md)"
        )
    return globals()[cfg.name]


def _adapter(cfg: SchemeConfig) -> Callable[[nn.Module, SchemeConfig], int]:
    """The adapter function of `scheme.adapter`: a built-in name or a module.function."""
    if "." in cfg.adapter:
        return importable(cfg.adapter, "scheme.adapter", SchemeError)
    if cfg.adapter not in ADAPTERS:
        raise SchemeError(
            f"unknown scheme.adapter {cfg.adapter!r}; choose one of: {', '.join(ADAPTERS)}, or "
            "a module.function"
        )
    return globals()[f"adapter_{cfg.adapter}"]


def adapter_none(model: nn.Module, cfg: SchemeConfig) -> int:
    """No adapter: 0 adapter parameters."""
    return 0


def adapter_houlsby(model: nn.Module, cfg: SchemeConfig) -> int:
    """Houlsby adapters of bottleneck hidden / scheme.reduction (adapters.add_houlsby)."""
    try:
        return adapters.add_houlsby(model, cfg.reduction)
    except ValueError as err:
        raise SchemeError(str(err)) from err


def _make_optimizer(cfg: SchemeConfig, params: list, lr: float) -> torch.optim.Optimizer:
    """Adam, or plain SGD (no momentum) for scheme.optimizer=sgd, over parameters or groups."""
    if optimizer_name(cfg) == "sgd":
        return torch.optim.SGD(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, fused=True)


def fixed(model: nn.Module, cfg: SchemeConfig, lr: float) -> Optimizer:
    """One learning rate (Lu et al., Rothermel et al.: Adam)."""
    return _make_optimizer(cfg, _trainable(model), lr), ()


def nesterov(model: nn.Module, cfg: SchemeConfig, lr: float) -> Optimizer:
    """SGD with Nesterov momentum, one learning rate."""
    params = _trainable(model)
    sgd = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, fused=True)
    return sgd, ()


def discriminative(model: nn.Module, cfg: SchemeConfig, lr: float) -> Optimizer:
    """One parameter group per layer group at lr · decay^(depth from the top)."""
    groups = _trainable_groups(model)
    return _by_group(groups, [lr * cfg.decay**depth for depth in _depths(groups)], cfg), ()


def gradual_unfreeze(model: nn.Module, cfg: SchemeConfig, lr: float) -> Optimizer:
    """One LR; in epoch e only the groups of depth <= e (from the top) train."""
    groups = _trainable_groups(model)
    optimizer = _by_group(groups, [lr] * len(groups), cfg)
    unfreeze = [
        Unfreeze(depth, tuple(g.params.values()), g.name)
        for g, depth in zip(groups, _depths(groups), strict=True)
    ]
    return optimizer, unfreeze


def _trainable_groups(model: nn.Module) -> list[LayerGroup]:
    """Layer groups restricted to trainable parameters, empty groups dropped."""
    try:
        groups = layer_groups(model)
    except ValueError as err:
        raise SchemeError(str(err)) from err
    for group in groups:
        group.params = {n: p for n, p in group.params.items() if p.requires_grad}
    return [g for g in groups if g.params]


def _depths(groups: list[LayerGroup]) -> list[int]:
    """Depth from the top of each (non-empty) group: the top group is 0."""
    return list(range(len(groups) - 1, -1, -1))


def _by_group(
    groups: list[LayerGroup], lrs: list[float], cfg: SchemeConfig
) -> torch.optim.Optimizer:
    param_groups = [
        {"params": list(g.params.values()), "lr": lr, "name": g.name}
        for g, lr in zip(groups, lrs, strict=True)
    ]
    for g, lr in zip(groups, lrs, strict=True):
        log.info("group %-9s lr %.3g, %s parameters", g.name, lr, f"{_numel(g):,}")
    return _make_optimizer(cfg, param_groups, lrs[0])


def _numel(group: LayerGroup) -> int:
    return sum(p.numel() for p in group.params.values())


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]

"""Everything about a run that can be checked without data, in a second or so, before anything is
built: root values, the device, the task's keys and types, the model's weights against the
variant, the adapter against the architecture, the logger's login."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from xmodal_ft import hub, models, pruning, schemes, tasks, variants
from xmodal_ft.errors import UserError, importable
from xmodal_ft.record import trackers


class ConfigError(UserError, ValueError):
    """An invalid configuration value; the message names the key to fix."""


def check(cfg: DictConfig) -> None:
    """Check `cfg` (see the module docstring); raises a UserError naming the fix."""
    _validate(cfg)
    _check_device(cfg.device)
    variant = variants.VariantConfig(**plain(cfg.variant))
    model_cfg = models.ModelConfig(**plain(cfg.model))
    tokenizer = hub.resolve_path(model_cfg.path) if model_cfg.path else None
    tasks.check(plain(cfg.task), tokenizer)
    importable(model_cfg._target_, "model._target_", ConfigError)
    model_type = models.check(model_cfg, pretrained=variant.pretrained)
    schemes.check(schemes.SchemeConfig(**plain(cfg.scheme)), model_type)
    trackers.check_tracker(plain(cfg.logger))


def _validate(cfg: DictConfig) -> None:
    if not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr} must be > 0 (e.g. lr=1e-4)")
    for key in ("batch_size", "max_steps", "eval_every", "eval_batch_size", "log_every"):
        if not cfg[key] >= 1:
            raise ConfigError(f"{key}={cfg[key]} must be a positive integer")
    for key in ("checkpoint_every", "val_subset"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]} must be >= 1, or null")
    if cfg.max_epochs is not None and not cfg.max_epochs >= 1:
        raise ConfigError(f"max_epochs={cfg.max_epochs} must be >= 1, or null to use max_steps")
    if cfg.patience is not None and cfg.patience < 1:
        raise ConfigError(f"patience={cfg.patience} must be >= 1, or null to never stop early")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ConfigError(f"grad_clip={cfg.grad_clip} must be > 0, or null for no clipping")
    if cfg.get("pruner") is not None:
        pruning.build(plain(cfg.pruner))  # checks its keys' values
    threads = cfg.threads
    if threads not in ("auto", None) and not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads={threads} must be auto, a positive integer, or null")


def _check_device(name: str) -> None:
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name} is not a device: use auto, cpu or cuda[:<n>]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} but torch sees no CUDA device (torch.cuda.is_available() is False): "
            "use device=auto (CUDA when present) or device=cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s): "
            "use device=cuda or a smaller index"
        )


def plain(node: DictConfig) -> dict[str, Any]:
    """A config node as plain containers, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]

"""A run's parts from its config: the model (`model._target_` with its variant) and the loop's
settings."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from xmodal_ft import models, variants
from xmodal_ft.engine.plan import FitConfig
from xmodal_ft.errors import importable
from xmodal_ft.recipe.checks import ConfigError, plain
from xmodal_ft.tasks.base import TaskData


def build_model(cfg: DictConfig, data: TaskData, device: torch.device) -> nn.Module:
    """The run's model (`model._target_`, models.build by default) on `device` with its
    variant's trainable parameters."""
    variant = variants.VariantConfig(**plain(cfg.variant))
    model_cfg = models.ModelConfig(**plain(cfg.model))
    model = importable(model_cfg._target_, "model._target_", ConfigError)(
        model_cfg, data.spec, pretrained=variant.pretrained, seed=cfg.seed
    )
    variants.apply(model, variant)
    return model.to(device)


def fit_settings(cfg: DictConfig, steps_per_epoch: int) -> FitConfig:
    """The loop's settings; an epoch budget (max_epochs) replaces max_steps when set."""
    max_steps = cfg.max_steps
    if cfg.max_epochs is not None:
        max_steps = max(1, cfg.max_epochs * steps_per_epoch)
    return FitConfig(
        batch_size=cfg.batch_size,
        max_steps=max_steps,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        grad_clip=cfg.grad_clip,
        eval_batch_size=cfg.eval_batch_size,
        val_subset=cfg.val_subset,
        log_every=cfg.log_every,
        seed=cfg.seed,
        progress=cfg.progress,
        checkpoint_every=cfg.checkpoint_every,
    )

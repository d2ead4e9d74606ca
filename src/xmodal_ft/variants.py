"""Variants: which parameters train, given as parameter-name patterns; and the trainable report."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

from torch import nn

from xmodal_ft.config import VariantConfig
from xmodal_ft.errors import UserError

log = logging.getLogger(__name__)
__all__ = ["VariantConfig", "VariantError", "apply", "count_parameters", "set_trainable"]


class VariantError(UserError, ValueError):
    """A variant whose patterns match no parameter of the model."""


def apply(model: nn.Module, cfg: VariantConfig) -> dict[str, int]:
    """Set `requires_grad` by the variant's name patterns; return the parameter counts."""
    matched = set_trainable(model, cfg.trainable)
    if not matched:
        raise VariantError(
            f"variant {cfg.name}: no parameter matches trainable={list(cfg.trainable)}"
        )
    counts = count_parameters(model)
    log.info(
        "variant %s: %s of %s parameters trainable (%.2f%%)",
        cfg.name,
        f"{counts['trainable']:,}",
        f"{counts['total']:,}",
        100 * counts["trainable"] / counts["total"],
    )
    return counts


def set_trainable(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """`requires_grad_(name matches any pattern)` for every parameter; return the matched names."""
    matched = []
    for name, param in model.named_parameters():
        trainable = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        param.requires_grad_(trainable)
        if trainable:
            matched.append(name)
    return matched


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts."""
    params = list(model.parameters())
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
    }

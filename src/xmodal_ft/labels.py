"""Names derived from configs, without torch: shared by the optimizers (`schemes`) and the report.

Kept free of heavy imports so that `python -m xmodal_ft.report` reads results without torch.
"""

from __future__ import annotations

from typing import Protocol


class SchemeLike(Protocol):
    """What `optimizer_name` reads of a scheme config (`schemes.SchemeConfig` has both)."""

    name: str
    optimizer: str | None


def own_optimizer(scheme: str) -> str:
    """The optimizer scheme `scheme` uses unless `scheme.optimizer` says otherwise."""
    return "sgd" if scheme == "nesterov" else "adam"


def optimizer_name(cfg: SchemeLike) -> str:
    """The optimizer a scheme config uses: scheme.optimizer, else the scheme's own."""
    return cfg.optimizer or own_optimizer(cfg.name)

"""Lockstep groups: which runs of a multirun train together in one process.

Runs share a group when their resolved configs differ only in `lr` and `seed` and they start from
the same point: all finished (skipped), or all fresh or resuming from the same checkpoint step.
Under a pruner, all runs of a config form one group wherever they start (the pruner judges them
together, finished ones included, and the recipe cuts the same chunks on every launch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xmodal_ft import checkpoint
from xmodal_ft.record import identity
from xmodal_ft.runspec import RunSpec

VARYING = ("lr", "seed")  # keys lockstep runs may differ in


def groups(specs: Sequence[RunSpec]) -> list[list[int]]:
    """Indices of `specs` by group, in first-seen order; each group sorted by (seed, lr) so that
    runs sharing a seed (and so a random backbone) sit side by side."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(_key(spec), []).append(i)
    return [
        sorted(members, key=lambda i: (specs[i].cfg.seed, specs[i].cfg.lr))
        for members in groups.values()
    ]


def _key(spec: RunSpec) -> tuple[Any, ...]:
    shared = {k: v for k, v in spec.config.items() if k not in VARYING}
    if spec.cfg.get("pruner") is not None:
        return (identity.config_hash(shared),)
    return identity.config_hash(shared), spec.finished() is not None, _resume_step(spec)


def _resume_step(spec: RunSpec) -> int:
    path = spec.checkpoint_file
    return checkpoint.step(path) if path.exists() else 0

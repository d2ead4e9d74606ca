"""Lockstep groups: which runs of a multirun train together in one process.

Runs share a group when their resolved configs differ only in `lr` and `seed` and they start from
the same point: all finished (skipped), or all fresh or resuming from the same checkpoint step.
Under a pruner, finished runs join their group's unfinished runs (the pruner judges them too).
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
    _join_finished(groups, specs)
    return [
        sorted(members, key=lambda i: (specs[i].cfg.seed, specs[i].cfg.lr))
        for members in groups.values()
    ]


def _key(spec: RunSpec) -> tuple[Any, ...]:
    shared = {k: v for k, v in spec.config.items() if k not in VARYING}
    return identity.config_hash(shared), spec.finished() is not None, _resume_step(spec)


def _resume_step(spec: RunSpec) -> int:
    path = spec.checkpoint_file
    return checkpoint.step(path) if path.exists() else 0


def _join_finished(groups: dict[tuple[Any, ...], list[int]], specs: Sequence[RunSpec]) -> None:
    """Under a pruner, a group's finished runs (pruned ones among them) join its unfinished
    runs: they are skipped, and their validation histories keep the pruner's decisions those
    of the uninterrupted group (`pruning.GroupPruner`)."""
    for key in [k for k in groups if k[1] and specs[groups[k][0]].cfg.get("pruner") is not None]:
        other = next((k for k in groups if k[0] == key[0] and not k[1]), None)
        if other is not None:
            groups[other] += groups.pop(key)

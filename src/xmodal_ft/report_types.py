"""The report's data: runs read from results.json, their per-LR statistics (mean ± SEM over
seeds), the chosen LR, and runs that did not finish. The report builds them; its tables, plots
and paper comparison read them."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Group = tuple[str, str, str, str]  # task, model, variant, scheme label
GROUP = ("task", "model", "variant", "scheme")  # the config groups a report's group is made of


@dataclass(frozen=True)
class Run:
    """One finished run, as read from its results.json."""

    path: Path
    group: Group
    lr: float
    seed: int
    metric: str
    val: float
    test: float
    best_step: int
    history: list[dict[str, float]]
    config: dict[str, Any]
    tests: dict[str, float] = field(default_factory=dict)  # every test metric
    test_examples: int | None = None  # the test split's size (None: not recorded)
    pruned_at: int | None = None  # the step a pruner stopped it at (None: not pruned)
    threads: int | None = None  # torch's intra-op threads it trained on (None: not recorded)


@dataclass(frozen=True)
class LrStats:
    """Mean and SEM over the seeds of one group at one LR."""

    lr: float
    seeds: tuple[int, ...]
    val: tuple[float, float]
    test: tuple[float, float]
    steps: tuple[float, float]
    pruned: bool = False  # a pruner stopped its runs (all seeds of an LR stop together)


@dataclass(frozen=True)
class Selection:
    """A group's LR curve and its LR chosen by mean validation metric."""

    group: Group
    metric: str
    per_lr: list[LrStats]
    best: LrStats
    runs: list[Run]  # the runs at the chosen LR
    excluded: dict[float, tuple[int, ...]] = field(default_factory=dict)  # pruned LR: steps
    threads: dict[int, int] = field(default_factory=dict)  # thread count: runs of the group
    # pruned LRs whose seeds stopped at different steps: (seed, step or None) per seed
    uneven: dict[float, tuple[tuple[int, int | None], ...]] = field(default_factory=dict)

    @property
    def all_pruned(self) -> bool:
        """Whether a pruner stopped every LR (`best` is then the best of those it stopped last)."""
        return all(s.pruned for s in self.per_lr)


@dataclass(frozen=True)
class Failure:
    """A run of the sweep without complete results: failed, killed or still running."""

    path: Path  # the run dir
    run: str  # what identifies it in the sweep: its overrides (e.g. lr=0.001,seed=1), or ""
    status: str  # results.json's status, or "no results.json"
    error: str  # results.json's error, or what the run dir shows (log, checkpoint)


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n)); SEM is nan for one value."""
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, sem

"""The study-wide trial budget, as pure rules over a study's trials (any worker computes the same).

A trial is *fresh* unless it retries a failed one (Optuna's `failed_trial` system attribute, as
`RetryFailedTrialCallback` writes it). The budget is the first `n_trials` fresh trials in number
order: storages number a study's trials atomically and a trial's fresh/retry kind is fixed when it
is created, so whether a trial is in the budget never depends on which worker looks, or when. A
fresh trial past the budget is never run (marked `EXCESS`); a retry takes its failed trial's place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

RETRY_OF = "failed_trial"  # the first failed trial a retry repeats (optuna.storages convention)
EXCESS = "xmodal_excess"  # a fresh trial asked after the budget was used up; never run


def is_fresh(trial: FrozenTrial) -> bool:
    return RETRY_OF not in trial.system_attrs


def in_budget(trials: Iterable[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether fresh trial `number` is in the budget: under `n_trials` fresh ones precede it."""
    return sum(1 for t in trials if t.number < number and is_fresh(t)) < n_trials


def budget_left(trials: Iterable[FrozenTrial], n_trials: int) -> int:
    """Fresh trials still to ask for."""
    return max(0, n_trials - sum(1 for t in trials if is_fresh(t)))


def retries(trials: Iterable[FrozenTrial], first: int) -> int:
    """How often trial `first` has been retried."""
    return sum(1 for t in trials if t.system_attrs.get(RETRY_OF) == first)

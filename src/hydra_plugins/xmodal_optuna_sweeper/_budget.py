"""The study-wide trial budget and retries, as pure rules over a study's trials (any worker
computes the same).

A trial *counts* unless it retries a failed one (system attribute `failed_trial`, Optuna's
`RetryFailedTrialCallback` convention), was asked past the budget (`xmodal_excess`), or its job
returned no value because another worker was training its runs (`xmodal_unscored`: the same
parameters asked twice at once, as a categorical `lr` or the grid sampler can). The budget is the
first `n_trials` counting trials in number order. Storages number a study's trials atomically,
and a trial only ever stops counting (never starts), so a trial once found in the budget stays in
it whichever worker looks, and later; a trial asked past it is never run. A retry takes its failed
trial's place; several workers may create a retry of one failed trial at once, and the lowest
numbered one is *the* retry (`winner`), the others are dropped (`xmodal_duplicate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

RETRY_OF = "failed_trial"  # the first failed trial of a retry chain (optuna.storages convention)
RETRIES = "xmodal_retries"  # the failed trial this one retries (the chain's last link)
EXCESS = "xmodal_excess"  # asked after the budget was used up; never run
UNSCORED = "xmodal_unscored"  # its runs were trained by another worker's trial: no value
DEAD = "xmodal_dead"  # its worker died (no live lease in its run dirs for the grace period), or
# it retried a trial whose worker lived on after all (its runs were leased): to be retried
DUPLICATE = "xmodal_duplicate"  # a retry created beside the winning one; never run


def counts(trial: FrozenTrial) -> bool:
    attrs = trial.system_attrs
    return not any(key in attrs for key in (RETRY_OF, EXCESS, UNSCORED))


def in_budget(trials: Iterable[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether trial `number` is in the budget: fewer than `n_trials` counting ones precede it."""
    return sum(1 for t in trials if t.number < number and counts(t)) < n_trials


def budget_left(trials: Iterable[FrozenTrial], n_trials: int) -> int:
    """Counting trials still to ask for."""
    return max(0, n_trials - sum(1 for t in trials if counts(t)))


def retry_of(trials: Iterable[FrozenTrial], number: int) -> FrozenTrial | None:
    """The retry of failed trial `number` (the lowest numbered of those created), if any."""
    made = [t for t in trials if t.system_attrs.get(RETRIES) == number]
    return min(made, key=lambda t: t.number, default=None)


def is_duplicate(trials: Iterable[FrozenTrial], trial: FrozenTrial) -> bool:
    """Whether `trial` is a retry created beside the winning one."""
    if RETRIES not in trial.system_attrs:
        return False
    winner = retry_of(trials, trial.system_attrs[RETRIES])
    return winner is not None and winner.number != trial.number


def retries(trials: Iterable[FrozenTrial], first: int) -> int:
    """How often trial `first` has been retried (its chain's retries, duplicates left out)."""
    trials = list(trials)
    return sum(
        1 for t in trials if t.system_attrs.get(RETRY_OF) == first and not is_duplicate(trials, t)
    )

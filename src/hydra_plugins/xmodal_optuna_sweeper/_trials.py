"""Trial bookkeeping for the sweep: asking within the study-wide budget, telling outcomes,
failing and retrying the trials of dead workers (used by `_impl.SharedStudySweeper`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial
from sqlalchemy.exc import SQLAlchemyError

from xmodal_ft.record.results import read_results

from . import _budget, _liveness

log = logging.getLogger(__name__)
STORAGE_ERRORS = (SQLAlchemyError, StorageInternalError, OSError)
NOT_COPIED = {_budget.DEAD, _budget.DUPLICATE, _budget.UNSCORED, _budget.EXCESS}


class TrialBookkeeping:
    """The sweeper's trial bookkeeping (a mixin: `SharedStudySweeper` sets these attributes)."""

    study: Any
    store: Any
    study_id: int
    storage: str | None
    pruner: Any
    directions: list[str]
    n_trials: int
    max_retry: int | None
    max_failure_rate: float
    grace_period: float
    held: set[int]
    watch: _liveness.Watch
    _capped: set[int]

    # The budget and the others' trials ---------------------------------------------------------

    def _trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _others_running(self) -> list[FrozenTrial]:
        return [
            t for t in self._trials() if t.state == TrialState.RUNNING and t.number not in self.held
        ]

    def _ask(self) -> Trial | None:
        """A fresh trial in the budget, or None once it is used up; a trial asked past it (a
        race with another worker) is told FAIL, marked `xmodal_excess`, and not run."""
        if _budget.budget_left(self._trials(), self.n_trials) == 0:
            return None
        trial = self.study.ask()
        self.held.add(trial.number)
        if _budget.in_budget(self._trials(), trial.number, self.n_trials):
            return trial
        self._mark(trial.number, _budget.EXCESS)
        self._tell(trial.number, None, TrialState.FAIL)
        log.info(f"trial {trial.number}: the study has its {self.n_trials} trials, not run")
        return None

    # Retries of dead workers' trials ----------------------------------------------------------

    def _retries(self) -> list[Trial]:
        """Fail the trials of other workers judged dead, and create (and hold) the retries of the
        dead trials that have none yet: the trials to run."""
        if self.storage is None:
            return []
        trials = self._trials()
        for dead in self.watch.dead(self._others_running()):
            self._fail_dead(dead, trials)
        trials = self._trials()
        made = []
        for failed in trials:
            if failed.state != TrialState.FAIL or _budget.DEAD not in failed.system_attrs:
                continue
            if _budget.retry_of(trials, failed.number) is not None or _liveness.live(failed):
                continue  # retried already, or its runs still train (judged dead wrongly)
            first = failed.system_attrs.get(_budget.RETRY_OF, failed.number)
            tried = _budget.retries(trials, first)
            if self.max_retry is not None and tried >= self.max_retry:
                if failed.number not in self._capped:
                    self._capped.add(failed.number)
                    log.warning(
                        f"trial {failed.number} {failed.params}: its worker died; trial {first}"
                        f" was retried {tried} times (hydra.sweeper.max_retry): not again"
                    )
                continue
            retry = self._retry(failed, first)
            if retry is not None:
                made.append(retry)
        return made

    def _fail_dead(self, trial: FrozenTrial, trials: Sequence[FrozenTrial]) -> None:
        """Tell FAIL a trial judged dead (marked `xmodal_dead`, so that it is retried); a retry
        created beside the winning one by a worker that died is dropped instead."""
        duplicate = _budget.is_duplicate(trials, trial)
        if not self._mark(trial.number, _budget.DUPLICATE if duplicate else _budget.DEAD):
            return  # finished meanwhile
        if self._tell(trial.number, None, TrialState.FAIL) and not duplicate:
            log.warning(
                f"trial {trial.number} {trial.params}: none of its runs has had a live lease"
                f" for {self.grace_period:g} s (hydra.sweeper.grace_period; its worker died):"
                " failed, to be retried"
            )

    def _retry(self, failed: FrozenTrial, first: int) -> Trial | None:
        """Create the retry of `failed` (RUNNING, held here, its parameters, attributes and
        reported values); None when another worker's retry of it came first."""
        attrs = {k: v for k, v in failed.system_attrs.items() if k not in NOT_COPIED}
        template = create_trial(
            state=TrialState.RUNNING,
            params=failed.params,
            distributions=failed.distributions,
            user_attrs=failed.user_attrs,
            system_attrs={**attrs, _budget.RETRY_OF: first, _budget.RETRIES: failed.number},
            intermediate_values=failed.intermediate_values,
        )
        trial_id = self.store.create_new_trial(self.study_id, template_trial=template)
        retry = Trial(self.study, trial_id)
        self.held.add(retry.number)
        winner = _budget.retry_of(self._trials(), failed.number)
        if winner is not None and winner.number != retry.number:
            self._mark(retry.number, _budget.DUPLICATE)
            self._tell(retry.number, None, TrialState.FAIL)
            self.held.discard(retry.number)
            return None
        log.warning(
            f"trial {failed.number}: retried as trial {retry.number} with its parameters"
            f" {failed.params} (its run dirs: it resumes from their checkpoints)"
        )
        return retry

    # Telling outcomes --------------------------------------------------------------------------

    def _tell_batch(self, batch: Sequence[Trial], returns: Sequence[JobReturn]) -> bool:
        """Tell every trial of `batch` its job's outcome, whatever the others' (a NaN is told
        FAIL); raise a job's error only when more than `max_failure_rate` of the batch's jobs
        raised (a job of a trial another worker had failed meanwhile, judged dead, is not
        counted: its runs were taken over); True when a job was scored."""
        failed: list[JobReturn] = []
        unscored = 0
        for trial, ret in zip(batch, returns, strict=True):
            try:
                state, values = self._outcome(trial, ret)
                unscored += state == TrialState.FAIL  # its runs were another worker's
            except Exception as err:  # the job failed, or returned no usable value
                state, values = TrialState.FAIL, None
                if self.store.get_trial(self._id(trial.number)).state == TrialState.RUNNING:
                    log.warning(f"trial {trial.number} failed: {err}")
                    failed.append(ret)
                else:
                    log.warning(
                        f"trial {trial.number}: its job failed ({err}) after another worker had"
                        " failed the trial (judged dead): not counted"
                    )
            self._tell(trial.number, values, state)
            self.held.discard(trial.number)
        if len(failed) / len(returns) > self.max_failure_rate:
            log.error(
                f"{len(failed)} of {len(returns)} jobs failed"
                f" (hydra.sweeper.max_failure_rate={self.max_failure_rate})"
            )
            failed[0].return_value  # noqa: B018 (JobReturn raises the job's error, traceback too)
        return unscored < len(batch)

    def _outcome(self, trial: Trial, ret: JobReturn) -> tuple[TrialState, list[float] | None]:
        """The state and values to tell for a job's return (raises the job's own error)."""
        values = _values(ret, len(self.directions))
        if any(math.isnan(v) for v in values):  # its runs were leased by another worker's trial
            if _budget.RETRY_OF in self.store.get_trial_system_attrs(self._id(trial.number)):
                self._mark(trial.number, _budget.DEAD)  # the trial it retries lived on
                log.warning(
                    f"trial {trial.number} {trial.params}: no value (its runs are still being"
                    " trained elsewhere): failed, to be retried once they are free"
                )
            else:
                self._mark(trial.number, _budget.UNSCORED)
                log.warning(
                    f"trial {trial.number} {trial.params}: no value (another worker's trial was"
                    " training its runs): failed, and not counted in n_trials"
                )
            return TrialState.FAIL, None
        if self.pruner is not None and self._pruned(trial):
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, values

    def _pruned(self, trial: Trial) -> bool:
        """Whether a run of the trial was pruned (its results.json says so)."""
        attrs = self.store.get_trial_system_attrs(self._id(trial.number))
        for run_dir in attrs.get(_liveness.RUN_DIRS, ()):
            if (read_results(Path(run_dir)) or {}).get("pruned"):
                return True
        return False

    # Talking to the storage --------------------------------------------------------------------

    def _tell(self, number: int, values: list[float] | None, state: TrialState) -> bool:
        """Tell trial `number` its outcome; False (logged) when another worker finished it
        first, as it does with a trial it judged dead. Never raises for that race; storage
        errors (a database or file server stall) are tried again."""
        for attempt in range(5):
            try:
                told = self.study.tell(number, values, state, skip_if_finished=True)
                break
            except UpdateFinishedTrialError:  # finished between tell's check and its write
                told = self.store.get_trial(self._id(number))
                break
            except RuntimeError as err:  # the grid sampler asks to stop once its grid is done
                if "`Study.stop` is supposed to be invoked" not in str(err):
                    raise
                return True
            except STORAGE_ERRORS as err:
                if attempt == 4:
                    raise
                log.warning(f"trial {number}: telling {state.name} failed ({err}): again")
                time.sleep(2**attempt)
        if told.state == state:
            return True
        if number in self.held:
            log.warning(
                f"trial {number}: already {told.state.name}, so not {state.name} (another worker"
                " judged it dead: its retry takes its place)"
            )
        return False

    def _mark(self, number: int, key: str) -> bool:
        """Set system attribute `key` of running trial `number`; False if it has finished."""
        try:
            self.store.set_trial_system_attr(self._id(number), key, True)
        except UpdateFinishedTrialError:
            return False
        return True

    def _id(self, number: int) -> int:
        """The storage's id of trial `number`."""
        return self.store.get_trial_id_from_study_id_trial_number(self.study_id, number)


def _values(ret: JobReturn, n_values: int) -> list[float]:
    """The job's objective values (hydra-optuna-sweeper's checks); raises the job's own error."""
    value = ret.return_value
    try:
        values = [float(value)] if n_values == 1 else [float(v) for v in value]
    except (ValueError, TypeError) as err:
        raise ValueError(f"Return value must be float-castable. Got '{value}'.") from err
    if len(values) != n_values:
        raise ValueError(f"Expected {n_values} objective values, got {len(values)}.")
    return values

"""hydra-optuna-sweeper's `OptunaSweeperImpl` with `n_trials` counted over the whole study, so that
several workers on one storage fill one study (behaviour: xmodal_optuna_sweeper.py)."""

from __future__ import annotations

import functools
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import Trial, TrialState
from sqlalchemy.engine import make_url

from xmodal_ft.atomic import atomic_path
from xmodal_ft.errors import UserError

from . import _budget
from ._shared import SharedStudy, open_study

log = logging.getLogger(__name__)
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


class SharedStudySweeper(OptunaSweeperImpl):
    def __init__(
        self,
        *,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int | None,
        wait_for_others: bool,
        **optuna_keys: Any,
    ) -> None:
        super().__init__(**optuna_keys)
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.max_retry, self.wait_for_others = max_retry, wait_for_others

    def setup(self, **context: Any) -> None:
        """Check the keys (here, not in `__init__`, so that a mistake reaches the user as one
        line instead of wrapped in Hydra's InstantiationException), then as hydra-optuna-sweeper."""
        if self.storage is not None and not str(self.storage).startswith(RDB_SCHEMES):
            raise UserError(
                f"hydra.sweeper.storage={self.storage}: a database URL shares the study"
                " (sqlite:///path/study.db, postgresql://user:pass@host/db, mysql://...), or null"
            )
        if not 0 < self.heartbeat_interval < self.grace_period:
            raise UserError(
                f"hydra.sweeper.heartbeat_interval={self.heartbeat_interval},"
                f" grace_period={self.grace_period}: need 0 < heartbeat_interval < grace_period (s)"
            )
        if self.max_retry is not None and self.max_retry < 0:
            raise UserError(
                f"hydra.sweeper.max_retry={self.max_retry}: a count >= 0, or null (no cap)"
            )
        super().setup(**context)

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        space, fixed = self._search_space(arguments)
        directions = self._get_directions()
        study_keys = dict(study_name=self.study_name, sampler=self.sampler, directions=directions)
        if self.storage is None:
            study, shared = optuna.create_study(**study_keys), None
        else:
            study, storage = open_study(
                str(self.storage),
                heartbeat_interval=self.heartbeat_interval,
                grace_period=self.grace_period,
                **study_keys,
            )
            self.sampler.reseed_rng()  # one seed in every worker would draw the same values
            shared = SharedStudy(
                study,
                storage,
                heartbeat_interval=self.heartbeat_interval,
                grace_period=self.grace_period,
                max_retry=self.max_retry,
            )
        where = make_url(str(self.storage)).render_as_string() if self.storage else "memory"
        log.info(f"Study {study.study_name} in {where}: {self.n_trials} trials in all")
        with shared or nullcontext():
            self._fill(study, shared, space, fixed, len(directions))
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        log.info(f"Study {study.study_name}: {len(done)} trials complete")
        self._write_results(study, len(directions))

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict]:
        """The search space and fixed parameters, as hydra-optuna-sweeper builds them (a grid
        sampler gets its grid and caps `n_trials` at its size)."""
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides(
            [*self._parse_sweeper_params_config(), *arguments]
        )
        space = {**(self.search_space_distributions or {}), **space}
        sampler = self.sampler
        if isinstance(sampler, functools.partial) and sampler.func == optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            self.sampler = sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(c) for c in grid.values()))
        return {k: v for k, v in space.items() if k not in fixed}, fixed

    def _fill(
        self,
        study: optuna.Study,
        shared: SharedStudy | None,
        space: dict[str, BaseDistribution],
        fixed: dict,
        n_values: int,
    ) -> None:
        """Run batches of up to `n_jobs` trials (retries of dead workers' trials first, then fresh
        ones) until the budget is used; then, with `wait_for_others`, wait for the other workers'
        running trials, retrying those whose worker dies."""
        pending, waiting = [], False
        while True:
            if shared is not None:
                pending += [Trial(study, trial_id) for trial_id in shared.retry_stale()]
            batch, pending = pending[: self.n_jobs], pending[self.n_jobs :]
            while len(batch) < self.n_jobs and (trial := self._ask(study, shared)) is not None:
                batch.append(trial)
            if batch:
                self._run(study, shared, batch, space, fixed, n_values)
            elif shared is not None and self.wait_for_others and shared.others_running():
                if not waiting:
                    log.info("No trial left to ask: waiting for the other workers' running trials")
                waiting = True
                time.sleep(self.heartbeat_interval)
            else:
                return

    def _ask(self, study: optuna.Study, shared: SharedStudy | None) -> Trial | None:
        """A fresh trial in the budget, or None once it is used up; a trial asked past it (a
        race with another worker) is told FAIL, marked `EXCESS`, and not run."""
        if _budget.budget_left(study.get_trials(deepcopy=False), self.n_trials) == 0:
            return None
        trial = study.ask()
        if shared is not None:
            shared.hold(shared.trial_id(trial.number))
        if _budget.in_budget(study.get_trials(deepcopy=False), trial.number, self.n_trials):
            return trial
        trial.set_system_attr(_budget.EXCESS, True)
        self._tell(study, shared, trial, TrialState.FAIL, None)
        log.info(f"trial {trial.number}: the study has its {self.n_trials} trials, not run")
        return None

    def _run(
        self,
        study: optuna.Study,
        shared: SharedStudy | None,
        batch: list[Trial],
        space: dict[str, BaseDistribution],
        fixed: dict,
        n_values: int,
    ) -> None:
        """Launch `batch` and tell each trial its result (as hydra-optuna-sweeper does). Job
        numbers come from the trial numbers, so workers never share one: `hydra.job.num` is
        `n_jobs` × the batch's first trial number + the job's place in the batch."""
        overrides = self._configure_trials(batch, space, fixed)
        returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number * self.n_jobs)
        failures = []
        for trial, ret in zip(batch, returns, strict=True):
            try:
                values = _values(ret, n_values)
            except Exception as err:  # the job failed, or returned no usable value
                log.warning(f"Failed experiment: {err}")
                failures.append(err)
                self._tell(study, shared, trial, TrialState.FAIL, None)
            else:
                self._tell(study, shared, trial, TrialState.COMPLETE, values)
        if len(failures) / len(returns) > self.max_failure_rate:
            log.error(
                f"Failed {failures} times out of {len(returns)} "
                f"with max_failure_rate={self.max_failure_rate}."
            )
            for ret in returns:
                ret.return_value  # noqa: B018 (JobReturn raises the job's error with its traceback)

    def _tell(
        self,
        study: optuna.Study,
        shared: SharedStudy | None,
        trial: Trial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        try:
            study.tell(trial, values, state)
        except RuntimeError as err:
            if "already finished" in str(err):  # failed by another worker: the retry reuses
                log.warning(f"trial {trial.number}: taken as lost by another worker ({err})")
            elif "`Study.stop` is supposed to be invoked" not in str(err):  # grid sampler done
                raise
        if shared is not None:
            shared.release(shared.trial_id(trial.number))

    def _write_results(self, study: optuna.Study, n_values: int) -> None:
        """`<sweep dir>/optimization_results.yaml` (atomically: every worker writes it)."""
        if n_values == 1:
            best = study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info(f"Best parameters: {best.params}")
            log.info(f"Best value: {best.value}")
        else:
            front = [{"params": t.params, "values": t.values} for t in study.best_trials]
            results = {"name": "optuna", "solutions": front}
            log.info(f"Number of Pareto solutions: {len(front)}")
        path = Path(str(self.config.hydra.sweep.dir)) / "optimization_results.yaml"
        with atomic_path(path) as tmp:
            OmegaConf.save(OmegaConf.create(results), tmp)


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

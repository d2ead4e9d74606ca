"""The sweep: set up, open the study, run batches of trials until the budget is used, wait for
the others, write the results file (behaviour: xmodal_optuna_sweeper.py; the trial bookkeeping:
_trials.py)."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, Trial, TrialState

from xmodal_ft import trial_pruning
from xmodal_ft.atomic import atomic_path
from xmodal_ft.errors import UserError

from . import _liveness, _space, _storage
from ._trials import TrialBookkeeping

log = logging.getLogger(__name__)


class SharedStudySweeper(TrialBookkeeping, Sweeper):
    def __init__(
        self,
        *,
        sampler: Any,
        pruner: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
        custom_search_space: str | None,
        grace_period: float,
        max_retry: int | None,
        wait_for_others: bool,
        max_wait: float | None,
    ) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage = None if storage is None else str(storage)
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, n_jobs
        self.max_failure_rate, self.params = max_failure_rate, params
        self.custom_search_space = custom_search_space
        self.grace_period, self.max_retry = grace_period, max_retry
        self.wait_for_others, self.max_wait = wait_for_others, max_wait
        self.held: set[int] = set()  # numbers of the trials this worker runs
        self.batch_size = n_jobs  # setup: 1 under the basic launcher
        self.watch = _liveness.Watch(grace_period)
        self._capped: set[int] = set()  # failed trials not retried again (max_retry), logged

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Check the keys (here, not in `__init__`, so that a mistake reaches the user as one
        line instead of wrapped in Hydra's InstantiationException), then the launcher."""
        _storage.check(self.storage)
        _check_number("grace_period", self.grace_period, "a number of seconds > 0", low=0)
        _check_number("max_retry", self.max_retry, "a count >= 0, or null (no cap)", low=-1)
        _check_number("max_wait", self.max_wait, "seconds >= 0, or null (no bound)", low=-1)
        _check_number("n_jobs", self.n_jobs, "a count >= 1", low=0)
        _check_number("n_trials", self.n_trials, "a count >= 0", low=-1)
        if not 0 <= self.max_failure_rate <= 1:
            raise UserError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: in [0, 1]")
        self.directions = _directions(self.direction)
        if self.pruner is not None:
            self._check_pruning(config)
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        # The basic launcher runs a batch's jobs one after another: a trial asked with the batch
        # would wait, leaseless, for its turn (and look dead); so it gets one trial at a time.
        self.batch_size = 1 if type(self.launcher).__name__ == "BasicLauncher" else self.n_jobs

    def _check_pruning(self, config: DictConfig | None) -> None:
        if len(self.directions) > 1:
            raise UserError(
                "hydra.sweeper.pruner: Optuna prunes single-objective studies only; set"
                " hydra.sweeper.pruner=null or one hydra.sweeper.direction"
            )
        if config is None:
            return
        if config.get("pruner") is not None:
            raise UserError(
                f"pruner={config.pruner.name} prunes lockstep grids; an Optuna sweep prunes with"
                " hydra/sweeper/pruner=...: set pruner=null"
            )
        refused = config.scheme.name == "gradual_unfreeze" or any(
            config.get(key) for key in ("grad_checkpointing", "compile")
        )
        if len(config.get("seeds") or ()) > 1 and refused:
            raise UserError(
                "hydra.sweeper.pruner judges a trial's seeds together, trained in lockstep,"
                " which scheme=gradual_unfreeze, grad_checkpointing=true and compile=true rule"
                " out: set seeds=[0] or hydra.sweeper.pruner=null"
            )

    def sweep(self, arguments: list[str]) -> None:
        self.open(arguments)
        self._fill()
        trials = self.study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        log.info(f"Study {self.study.study_name}: {len(done)} trials complete or pruned")
        self._write_results()

    def open(self, arguments: Sequence[str]) -> None:
        """Parse the search space, then create or load the study (this worker's view of it)."""
        self.directions = _directions(self.direction)
        space, fixed = _space.parse(self.params, arguments)
        sampler, n_trials = self.sampler, self.n_trials
        if isinstance(sampler, functools.partial):  # the grid sampler: its grid is the space
            grid = _space.grid(space)
            sampler = sampler(grid)
            n_trials = min(n_trials, math.prod(len(values) for values in grid.values()))
        self.n_trials, self.space, self.fixed = n_trials, space, fixed
        study, self.store = _storage.open_study(
            self.storage, study_name=self.study_name, sampler=sampler, pruner=self.pruner,
            directions=self.directions,
        )  # fmt: skip
        if self.storage is not None:
            sampler.reseed_rng()  # the same seed in every worker would draw the same values
        elif self.pruner is not None:
            trial_pruning.share(study, self.store)  # jobs in this process find it
        self.study = study
        self.study_id = self.store.get_study_id_from_name(study.study_name)
        pruner = f", pruner {type(self.pruner).__name__}" if self.pruner is not None else ""
        log.info(
            f"Study {study.study_name} in {_storage.describe(self.storage)}: {n_trials} trials"
            f" in all, sampler {type(sampler).__name__}{pruner}"
        )

    # The loop ------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Run batches (retries of dead workers' trials first, then fresh ones) until the budget
        is used; then, with `wait_for_others`, wait while other workers' trials run, retrying
        those whose worker dies, for at most `max_wait` s."""
        pending: list[Trial] = []
        waiting_since: float | None = None
        while True:
            pending += self._retries()
            batch, pending = pending[: self.batch_size], pending[self.batch_size :]
            while len(batch) < self.batch_size and (trial := self._ask()) is not None:
                batch.append(trial)
            if batch:
                waiting_since = None
                if not self._run(batch):  # no job scored: another worker trains these runs
                    time.sleep(self._poll())
                continue
            others = self._others_running()
            if not others or not self.wait_for_others or self.storage is None:
                return
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.info(f"No trial left to ask: waiting for trials {_numbers(others)}")
            elif self.max_wait is not None and time.monotonic() - waiting_since > self.max_wait:
                log.warning(
                    f"Gave up waiting after {self.max_wait:g} s (hydra.sweeper.max_wait) for"
                    f" trials {_describe(others, self.watch)}"
                )
                return
            time.sleep(self._poll())

    def _poll(self) -> float:
        return min(30.0, max(0.5, self.grace_period / 6))

    # Running a batch --------------------------------------------------------------------------

    def _run(self, batch: list[Trial]) -> bool:
        """Launch `batch` and tell every trial its outcome; True when a job was scored. Job
        numbers come from the trial numbers, so workers never share one: `hydra.job.num` is
        `n_jobs` × the batch's first trial number + the job's place in the batch."""
        first_job = batch[0].number * self.n_jobs
        overrides = [self._configure(trial, first_job + i) for i, trial in enumerate(batch)]
        returns = self.launcher.launch(overrides, initial_job_idx=first_job)
        return self._tell_batch(batch, returns)

    def _configure(self, trial: Trial, job_num: int) -> list[str]:
        """The trial's overrides (its sampled parameters, then the fixed ones); its run dirs and
        the pruner's config are recorded in the trial for other workers and its job."""
        for name, dist in self.space.items():
            _suggest(trial, name, dist)
        for name, value in self.fixed.items():
            trial.set_user_attr(name, value)
        if self.custom_search_space:
            instantiate({"_target_": self.custom_search_space, "_partial_": True})(
                self.config, trial
            )
        overlap = trial.params.keys() & self.fixed.keys()
        if overlap:
            raise UserError(f"hydra.sweeper: {sorted(overlap)} both fixed and searched")
        overrides = [f"{name}={value}" for name, value in {**trial.params, **self.fixed}.items()]
        trial_id = self._id(trial.number)
        if self.pruner is not None:
            overrides.append(trial_pruning.override(self.storage, self.study.study_name, trial))
            pruner = OmegaConf.to_container(self.config.hydra.sweeper.pruner, resolve=True)
            self.store.set_trial_system_attr(trial_id, trial_pruning.PRUNER, pruner)
        dirs = self._run_dirs(overrides, job_num)
        self.store.set_trial_system_attr(trial_id, _liveness.RUN_DIRS, dirs)
        return overrides

    def _run_dirs(self, overrides: list[str], job_num: int) -> list[str]:
        """Where the job will train, as the launcher will compose it."""
        job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(job):
            job.hydra.job.id, job.hydra.job.num = f"job{job_num}", job_num
        job_dir = Path(str(self.config.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
        return _liveness.run_dirs(job_dir, job.get("seeds"))

    def _write_results(self) -> None:
        """`<sweep dir>/optimization_results.yaml` (atomically: every worker writes it)."""
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not trials:
            log.warning(f"Study {self.study.study_name}: no complete trial, so no best one")
            return
        if len(self.directions) == 1:
            best = self.study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info(f"Best parameters: {best.params}")
            log.info(f"Best value: {best.value}")
        else:
            front = [{"params": t.params, "values": t.values} for t in self.study.best_trials]
            results = {"name": "optuna", "solutions": front}
            log.info(f"Number of Pareto solutions: {len(front)}")
        path = Path(str(self.config.hydra.sweep.dir)) / "optimization_results.yaml"
        with atomic_path(path) as tmp:
            OmegaConf.save(OmegaConf.create(results), tmp)


def _check_number(key: str, value: float | None, want: str, low: float) -> None:
    """Refuse `hydra.sweeper.<key>` unless it is null (where `want` allows it) or above `low`."""
    if value is None and "null" in want:
        return
    if value is None or not value > low:
        raise UserError(f"hydra.sweeper.{key}={value}: {want}")


def _directions(direction: Any) -> list[str]:
    names = [direction] if isinstance(direction, str) else list(direction)
    names = [getattr(name, "name", name) for name in names]  # an enum from an older config
    for name in names:
        if name not in ("minimize", "maximize"):
            raise UserError(f"hydra.sweeper.direction={direction}: minimize, maximize or a list")
    return names


def _suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    """Sample `name` from `dist` (a retry keeps the value it has)."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"{name}: {dist} is not a distribution of the override grammar")


def _numbers(trials: Sequence[FrozenTrial]) -> list[int]:
    return [t.number for t in trials]


def _describe(trials: Sequence[FrozenTrial], watch: _liveness.Watch) -> str:
    """Each trial with its parameters, run dirs and liveness (for the give-up line)."""
    parts = []
    for t in trials:
        state = "live" if _liveness.live(t) else f"quiet for {watch.quiet_for(t.number):.0f} s"
        dirs = ", ".join(t.system_attrs.get(_liveness.RUN_DIRS, ())) or "no run dir yet"
        parts.append(f"{t.number} {t.params} ({state}; {dirs})")
    return "; ".join(parts)

"""The sweep: ask trials within the study-wide budget, launch them, tell their outcomes, retry
the trials of dead workers, wait for the others (behaviour: xmodal_optuna_sweeper.py)."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
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
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial
from sqlalchemy.exc import SQLAlchemyError

from xmodal_ft import trial_pruning
from xmodal_ft.atomic import atomic_path
from xmodal_ft.errors import UserError
from xmodal_ft.record.results import read_results

from . import _budget, _liveness, _space, _storage

log = logging.getLogger(__name__)
STORAGE_ERRORS = (SQLAlchemyError, StorageInternalError, OSError)
NOT_COPIED = {_budget.DEAD, _budget.DUPLICATE, _budget.UNSCORED, _budget.EXCESS}


class SharedStudySweeper(Sweeper):
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

    # Running a batch --------------------------------------------------------------------------

    def _run(self, batch: list[Trial]) -> bool:
        """Launch `batch` and tell every trial its outcome; True when a job was scored. Job
        numbers come from the trial numbers, so workers never share one: `hydra.job.num` is
        `n_jobs` × the batch's first trial number + the job's place in the batch."""
        first_job = batch[0].number * self.n_jobs
        overrides = [self._configure(trial, first_job + i) for i, trial in enumerate(batch)]
        returns = self.launcher.launch(overrides, initial_job_idx=first_job)
        return self._tell_batch(batch, returns)

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

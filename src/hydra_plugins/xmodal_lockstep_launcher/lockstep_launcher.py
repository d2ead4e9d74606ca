"""`hydra/launcher=lockstep`: set up every job as the basic launcher does, then train the jobs'
runs that differ only in `lr` and `seed` together: one group after another in this process, on
worker processes pinned to `devices` (GPUs, or CPU core sets), or as SLURM jobs (`slurm`),
through `xmodal_ft.dispatch`.

Each job first goes through Hydra's `run_job` (run dir, `.hydra/` files, job log, callbacks) with
`xmodal_ft.recipe.deferred()` active, so `train.py` queues the job's runs instead of training them.
The queued runs are grouped (`xmodal_ft.groups`) and each group trains with `recipe.train`; the
jobs' return values (the validation metric, the mean over `seeds`) are then filled in, so sweepers
(Optuna) read them as from any launcher. A group that fails marks its jobs failed: a user error
(`xmodal_ft.errors.UserError`, e.g. a scheme lockstep refuses) is logged as one line, anything else
with its traceback; the sweeper then re-raises it and `train.py` ends as for any failed job.
While a group trains, the console shows its records in the job log's format.

Composing a job's config takes Hydra ~0.3 s, and the sweeper composes every job once more to check
it; a job that differs from an already composed one only in root values (`lr=`, `seed=`) gets a
copy of that config with its overrides applied by Hydra's own code instead (`Composer`: the same
config, a test compares them).
"""

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class LockstepLauncherConf:
    _target_: str = "hydra_plugins.xmodal_lockstep_launcher.lockstep_launcher.LockstepLauncher"
    max_runs: Optional[int] = None  # noqa: UP045 (OmegaConf reads Optional)
    devices: Any = None  # null, a count, or a list of cuda:<i> / cpu:<cores> (xmodal_ft.placement)
    slurm: Optional[dict[str, Any]] = None  # noqa: UP045 (submitit's keys: one SLURM job per group)


ConfigStore.instance().store(
    group="hydra/launcher", name="xmodal_lockstep", node=LockstepLauncherConf, provider="xmodal_ft"
)


class LockstepLauncher(Launcher):
    def __init__(
        self,
        max_runs: int | None = None,
        devices: int | str | Sequence[str] | None = None,
        slurm: dict[str, Any] | None = None,
    ) -> None:
        self.max_runs = max_runs
        self.devices = devices
        self.slurm = slurm
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        Composer.install(hydra_context.config_loader)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from xmodal_ft import placement, workers

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        devices = [] if self.slurm else placement.resolve(self.devices)
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(workers.Workers(devices)) if devices else None
            returns, queues = self._set_up(job_overrides, initial_job_idx)
            specs = [spec for queue in queues for spec in queue]
            job_of = [job for job, queue in enumerate(queues) for _ in queue]
            values = self._train(specs, job_of, returns, pool)
        for job, ret in enumerate(returns):
            if ret.status != JobStatus.COMPLETED:
                continue
            mine = [v for v, j in zip(values, job_of, strict=True) if j == job]
            failed = [v for v in mine if isinstance(v, BaseException)]
            if failed:
                ret.status, ret.return_value = JobStatus.FAILED, failed[0]
            else:
                ret.return_value = sum(mine) / len(mine)
        return returns

    def _set_up(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> tuple[list[JobReturn], list[list[Any]]]:
        """Each job through Hydra's `run_job` with `train.py`'s runs queued, not trained: the
        jobs' returns and each job's queued runs."""
        from xmodal_ft import recipe

        log.info(f"Launching {len(job_overrides)} jobs in lockstep")
        returns, queues = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            with recipe.deferred() as queue:
                returns.append(
                    run_job(
                        hydra_context=self.hydra_context,
                        task_function=self.task_function,
                        config=sweep_config,
                        job_dir_key="hydra.sweep.dir",
                        job_subdir_key="hydra.sweep.subdir",
                    )
                )
            queues.append([spec for specs in queue for spec in specs])
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns, queues

    def _train(
        self, specs: list[Any], job_of: list[int], returns: list[JobReturn], workers: Any
    ) -> list[float | BaseException]:
        """Train the runs by lockstep group: as SLURM jobs, on the device `workers`, or here;
        each run's validation metric or why it failed."""
        from xmodal_ft import dispatch, groups

        log_of = [_log_file(returns[job]) for job in job_of]
        lockstep_groups = [
            dispatch.Group(
                [specs[i] for i in members], members, [job_of[i] for i in members],
                [log_of[i] for i in members],
            )
            for members in groups.group(specs)
        ]  # fmt: skip
        if self.slurm:
            folder = Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "%j"
            outcomes = dispatch.on_slurm(lockstep_groups, self.max_runs, dict(self.slurm), folder)
        elif workers is not None:
            lockstep_groups = dispatch.split(lockstep_groups, len(workers.devices))
            labels = ", ".join(device.label for device in workers.devices)
            log.info(f"{len(lockstep_groups)} groups on {len(workers.devices)} devices ({labels})")
            outcomes = workers.train(lockstep_groups, self.max_runs)
        else:
            outcomes = dispatch.here(lockstep_groups, self.max_runs)
        values: list[float | BaseException] = [math.nan] * len(specs)
        for group, outcome in zip(lockstep_groups, outcomes, strict=True):
            for i, value in zip(group.index, outcome, strict=True):
                values[i] = value
        given_up = sorted(
            {job_of[i] for i, v in enumerate(values) if isinstance(v, dispatch.GaveUp)}
        )
        if given_up:
            log.error(
                f"gave up on jobs {given_up} (their workers or jobs died or hung, see above); "
                "the same command with the same hydra.sweep.dir resumes them"
            )
        return values


class Composer:
    """`load_sweep_config` of Hydra's config loader, composing only once per set of config-group
    choices: a job whose overrides differ from a composed job's only in root scalar values gets a
    copy of that job's config with them applied as Hydra applies them. Installed on the loader,
    it serves the sweeper's check of every job (`validate_batch_is_legal`) and the launcher."""

    def __init__(self, loader: Any) -> None:
        self.compose = loader.load_sweep_config
        self.parser = OverridesParser.create()
        self.composed: list[tuple[DictConfig, list[Override], DictConfig]] = []

    @classmethod
    def install(cls, loader: Any) -> None:
        """Serve `loader`'s sweep configs; where this Hydra lacks the private helpers
        (`private_hydra`), the loader composes every job itself."""
        if private_hydra() is not None:
            loader.load_sweep_config = cls(loader).load_sweep_config

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]):
        parsed = self.parser.parse_overrides(sweep_overrides)
        for master, done, config in self.composed:
            changed = _changed_values(done, parsed, config) if master is master_config else None
            if changed is not None:
                return self._derived(master, config, changed, parsed)
        config = self.compose(master_config, sweep_overrides)
        self.composed.append((master_config, parsed, copy.deepcopy(config)))  # run_job alters it
        return config

    @staticmethod
    def _derived(
        master: DictConfig, config: DictConfig, changed: list[Override], parsed: list[Override]
    ) -> DictConfig:
        apply_overrides, get_overrides_dirname = private_hydra()
        derived = copy.deepcopy(config)
        apply_overrides(changed, derived)
        app = [o for o in parsed if not o.is_hydra_override()]
        hydra = derived.hydra
        hydra.overrides.task = [o.input_line for o in app]
        names = hydra.job.config.override_dirname
        hydra.job.override_dirname = get_overrides_dirname(
            overrides=app, kv_sep=names.kv_sep, item_sep=names.item_sep,
            exclude_keys=names.exclude_keys,
        )  # fmt: skip
        OmegaConf.copy_cache(from_config=master, to_config=derived)
        return derived


def private_hydra() -> tuple[Callable[..., None], Callable[..., str]] | None:
    """Hydra's private helpers the `Composer` applies overrides with, as composing does
    (`ConfigLoaderImpl._apply_overrides_to_config`, `get_overrides_dirname` in
    `hydra._internal`), or None where this Hydra has them elsewhere."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
    except ImportError:
        return None
    apply_overrides = getattr(ConfigLoaderImpl, "_apply_overrides_to_config", None)
    return None if apply_overrides is None else (apply_overrides, get_overrides_dirname)


def _changed_values(
    done: list[Override], parsed: list[Override], config: DictConfig
) -> list[Override] | None:
    """The overrides of `parsed` that differ from `done`'s, when each only sets another scalar
    value of a key that is not a config group (None otherwise: compose the job afresh)."""
    if [o.key_or_group for o in done] != [o.key_or_group for o in parsed]:
        return None
    changed = [new for old, new in zip(done, parsed, strict=True) if old != new]
    groups = config.hydra.runtime.choices
    for override in changed:
        key = override.key_or_group
        current = OmegaConf.select(config, key, default=None, throw_on_missing=False)
        if (
            override.type != OverrideType.CHANGE
            or override.is_hydra_override()
            or override.package is not None
            or key in groups
            or "/" in key
            or isinstance(override.value(), (dict, list))
            or current is None
            or OmegaConf.is_config(current)
        ):
            return None
    return changed


def _log_file(ret: JobReturn) -> Path:
    hydra = ret.hydra_cfg.hydra
    return Path(hydra.runtime.output_dir) / f"{hydra.job.name}.log"

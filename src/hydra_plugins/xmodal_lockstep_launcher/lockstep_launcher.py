"""`hydra/launcher=lockstep`: set up every job as the basic launcher does, then train the jobs'
runs that differ only in `lr` and `seed` together: one group after another in this process, on
worker processes pinned to `devices` (GPUs, or CPU core sets), or as SLURM jobs (`slurm`),
through `xmodal_ft.dispatch`.

Each job goes through Hydra's `run_job` (run dir, `.hydra/` files, job log, callbacks) with the
launcher's own task function in place of `train.py`'s: it checks the job's config as `train.py`
would (`xmodal_ft.recipe.check`) and returns the job's runs (`xmodal_ft.runspec.of_config`, the
runs `train.py` would train), which `run_job` hands back as the job's return value. The runs are
grouped (`xmodal_ft.lockstep.grouping`) and each group trains with `xmodal_ft.recipe.train`; the
jobs' return values become their validation metric (the mean over `seeds`), so sweepers
(Optuna) read them as from any launcher. A group that fails marks its jobs failed: a user error
(`xmodal_ft.errors.UserError`, e.g. a scheme lockstep refuses) is logged as one line, anything
else with its traceback; the sweeper then re-raises it and `train.py` ends as for any failed
job. While a group trains, the console shows its records in the job log's format.

The sweep's jobs are composed once per set of config-group choices (`composing.ComposeOnce`,
which the launcher puts in the Hydra context it shares with the sweeper).
"""

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
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
from omegaconf import DictConfig, open_dict

from hydra_plugins.xmodal_lockstep_launcher.composing import ComposeOnce

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
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """`task_function` (train.py's) is not called: each job's runs are collected instead."""
        self.config = config
        self.hydra_context = hydra_context
        if not isinstance(hydra_context.config_loader, ComposeOnce):
            hydra_context.config_loader = ComposeOnce(hydra_context.config_loader)

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
            returns = self._set_up(job_overrides, initial_job_idx)
            done = [ret.status == JobStatus.COMPLETED for ret in returns]
            runs = [ret.return_value if ok else [] for ret, ok in zip(returns, done, strict=True)]
            specs = [spec for job in runs for spec in job]
            job_of = [job for job, specs_of_job in enumerate(runs) for _ in specs_of_job]
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
    ) -> list[JobReturn]:
        """Each job through Hydra's `run_job` with `job_runs` as its task function: the jobs'
        returns, a completed one's value its runs."""
        log.info(f"Launching {len(job_overrides)} jobs in lockstep")
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=job_runs,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _train(
        self, specs: list[Any], job_of: list[int], returns: list[JobReturn], workers: Any
    ) -> list[float | BaseException]:
        """Train the runs by lockstep group: as SLURM jobs, on the device `workers`, or here;
        each run's validation metric or why it failed."""
        from xmodal_ft import dispatch
        from xmodal_ft.lockstep import grouping

        log_of = [_log_file(returns[job]) for job in job_of]
        lockstep_groups = [
            dispatch.Group(
                [specs[i] for i in members], members, [job_of[i] for i in members],
                [log_of[i] for i in members],
            )
            for members in grouping.groups(specs)
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


def job_runs(cfg: DictConfig) -> list[Any]:
    """A job's task function under this launcher: its config checked as `train.py` checks it,
    and the runs `train.py` would train (`xmodal_ft.runspec.of_config`, labelled as `train.py`
    labels them: the sweep dir and the job's overrides)."""
    from xmodal_ft import errors, logs, recipe, runspec

    logs.quiet()
    hc = HydraConfig.get()
    with errors.reported(debug=cfg.debug, multirun=True):
        recipe.check(cfg)
    name = hc.job.override_dirname or None
    return runspec.of_config(
        cfg, hc.runtime.output_dir, hc.runtime.choices, sweep=hc.sweep.dir, name=name
    )


def _log_file(ret: JobReturn) -> Path:
    hydra = ret.hydra_cfg.hydra
    return Path(hydra.runtime.output_dir) / f"{hydra.job.name}.log"

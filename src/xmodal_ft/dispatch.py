"""Where a sweep's lockstep groups train: in this process one after another, on worker processes
pinned to devices (`xmodal_ft.workers`), or as SLURM jobs through submitit.

Each group trains with `recipe.train`, which skips finished runs and resumes checkpointed ones,
so a requeued SLURM job or a relaunched sweep continues where the runs stopped. A group that
fails comes back as one exception per run: a user error (`UserError`) is logged as one line,
anything else with its traceback. Launchers wait for groups elsewhere with bounds (`watch`): a
group whose worker or job dies or makes no progress is trained again, at most `RETRIES` times,
then given up on (`GaveUp`, logged).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit
from omegaconf import OmegaConf

from xmodal_ft import watch
from xmodal_ft.errors import UserError
from xmodal_ft.runspec import RunSpec

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format
Outcome = list[float | BaseException]  # each run's validation metric, or why it failed
RETRIES = 2  # a group whose worker or job died or hung trains again this often


class GaveUp(RuntimeError):
    """A group was given up on: its worker or job died or hung `RETRIES` + 1 times."""


@dataclass(frozen=True)
class Group:
    """Runs that train together; for each, its place in the sweep's list of runs, its job's
    number and that job's log file."""

    specs: list[RunSpec]
    index: list[int]
    job_of: list[int]
    log_of: list[Path]

    @property
    def jobs(self) -> list[int]:
        return sorted(set(self.job_of))

    def part(self, start: int, end: int) -> Group:
        cut = slice(start, end)
        return Group(self.specs[cut], self.index[cut], self.job_of[cut], self.log_of[cut])


def split(groups: Sequence[Group], workers: int) -> list[Group]:
    """`groups`, the largest cut in two halves (seeds stay side by side) until every one of
    `workers` has a group to train, or no group has two runs. A group with a pruner stays
    whole: the pruner judges each LR by all of its seeds."""
    parts = list(groups)
    while len(parts) < workers:
        cuttable = [i for i, part in enumerate(parts) if not part.specs[0].cfg.get("pruner")]
        largest = max(cuttable, key=lambda i: len(parts[i].specs), default=None)
        if largest is None or len(parts[largest].specs) < 2:
            break
        group = parts.pop(largest)
        half = (len(group.specs) + 1) // 2
        parts[largest:largest] = [group.part(0, half), group.part(half, len(group.specs))]
    return parts


def train_group(group: Group, max_runs: int | None, memory_share: float = 1.0) -> Outcome:
    """Train `group`, its records appended to its jobs' log files; failures come back as values."""
    from xmodal_ft import recipe  # torch and transformers: imported where a group trains

    with _job_logs(group.log_of):
        try:
            return list(recipe.train(group.specs, "lockstep", max_runs, memory_share))
        except UserError as err:  # the sweeper re-raises it when it reads the job's result
            log.error(f"jobs {group.jobs} not trained: {err}")
            return [err] * len(group.specs)
        except Exception as err:  # a bug: its traceback belongs in the log
            log.exception(f"jobs {group.jobs} failed")
            return [portable(err)] * len(group.specs)


def here(groups: Sequence[Group], max_runs: int | None) -> list[Outcome]:
    """Train the groups in this process, one after another."""
    outcomes = []
    for group in groups:
        log.info(f"Training jobs {group.jobs} together")
        outcomes.append(train_group(group, max_runs))
    return outcomes


class _LabelledConsole(logging.StreamHandler):
    """A worker's console: the job log's format with the worker's device in place of the
    logger's name (records of several workers interleave on one terminal)."""

    def __init__(self, label: str):
        super().__init__()
        self.setFormatter(logging.Formatter(LOG_FORMAT.replace("%(name)s", label)))


def console(label: str) -> None:
    """Show this process's records on its console, labelled `label` (a device, `slurm`)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(_LabelledConsole(label))


def on_slurm(
    groups: Sequence[Group], max_runs: int | None, options: dict[str, Any], folder: Path
) -> list[Outcome]:
    """Submit one SLURM job per group (a job array) and wait for them, with bounds. A job that
    times out or is preempted is requeued and continues from its runs' checkpoints (`GroupJob`);
    one that fails outside training (killed, node failure) or makes no progress for twice the
    liveness timeout while running (`watch`; cancelled) is submitted again, at most `RETRIES`
    times, then given up on (its runs fail with a message that says so)."""
    options = dict(options)
    cluster = options.pop("cluster", "slurm")
    timeouts = {f"{cluster}_max_num_timeout": options.pop("max_num_timeout", 3)}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **timeouts)
    executor.update_parameters(**_submitit_parameters(options))
    with executor.batch():
        jobs = [executor.submit(GroupJob(), sendable(group), max_runs) for group in groups]
    for group, job in zip(groups, jobs, strict=True):
        log.info(f"jobs {group.jobs}: {cluster} job {job.job_id} ({len(group.specs)} runs)")
    waits = [_JobWait(group, job, cluster) for group, job in zip(groups, jobs, strict=True)]
    while not all(wait.outcome is not None for wait in waits):
        for wait in waits:
            if wait.outcome is None and (why := wait.look()) is not None:
                wait.retry(why, executor, max_runs)
        time.sleep(watch.poll_s())
    return [wait.outcome for wait in waits]  # type: ignore[misc]


class _JobWait:
    """The wait for one group's job (see `on_slurm`)."""

    def __init__(self, group: Group, job: submitit.Job, cluster: str):
        self.group, self.job, self.cluster = group, job, cluster
        self.attempts = 0
        self.running_since: float | None = None  # None: queued (or requeued)
        self.outcome: Outcome | None = None

    def look(self) -> str | None:
        """Set `outcome` once the job finished; or why it is to be submitted again."""
        name = f"{self.cluster} job {self.job.job_id}"
        if self.job.done():
            try:
                self.outcome = self.job.result()
            except Exception as err:  # the job failed outside training: its log says why
                return f"{name} failed: {_first_line(err)}"
            return None
        if self.job.state not in RUNNING:
            self.running_since = None
            return None
        now = time.time()
        self.running_since = self.running_since or now
        run_dirs = [spec.run_dir for spec in self.group.specs]
        latest = watch.last_progress(run_dirs, since=0.0)
        if latest < self.running_since:  # starting: no progress of its own yet
            if now - self.running_since > watch.startup_s():
                return f"{name} made no progress within {watch.startup_s():.0f} s of its start"
        elif now - latest > watch.hung_after_s():
            return f"{name} made no progress for {now - latest:.0f} s (twice the liveness timeout)"
        return None

    def retry(self, why: str, executor: submitit.AutoExecutor, max_runs: int | None) -> None:
        """Cancel the job and submit the group again, or give up after `RETRIES` retries."""
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)
        self.attempts += 1
        if self.attempts > RETRIES:
            message = f"gave up on jobs {self.group.jobs}: {why}, {RETRIES + 1} times"
            log.error(message)
            self.outcome = [GaveUp(message)] * len(self.group.specs)
            return
        self.job = executor.submit(GroupJob(), sendable(self.group), max_runs)
        self.running_since = None
        log.error(f"jobs {self.group.jobs}: {why}; submitted again as job {self.job.job_id}")


RUNNING = {"RUNNING", "COMPLETING"}  # submitit's job states of a job that runs now


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _submitit_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with submitit's names: its shared keys as they are, SLURM's own prefixed."""
    shared = submitit.AutoExecutor._valid_parameters()
    return {
        key if key in shared or key.startswith("slurm_") else f"slurm_{key}": value
        for key, value in options.items()
        if value is not None
    }


class GroupJob(submitit.helpers.Checkpointable):
    """One group as a submitit job. On timeout or preemption submitit resubmits it with the
    same arguments (the checkpoint protocol); `recipe.train` then skips the finished runs and
    resumes the others from their checkpoints."""

    def __call__(self, group: Group, max_runs: int | None) -> Outcome:
        console("slurm")
        return train_group(group, max_runs)


def sendable(group: Group) -> Group:
    """`group` with its configs as plain containers, which pickle (typed ones, and nodes that
    carry their parent config, may not); interpolations are kept: the worker resolves them
    (`${oc.env:..}` in its own environment)."""
    specs = [
        replace(
            spec,
            cfg=OmegaConf.create(OmegaConf.to_container(spec.cfg)),
            choices=None if spec.choices is None else _plain(spec.choices),
        )
        for spec in group.specs
    ]
    return replace(group, specs=specs)


def _plain(mapping: Any) -> dict[str, Any]:
    return OmegaConf.to_container(mapping) if OmegaConf.is_config(mapping) else dict(mapping)


def portable(err: BaseException) -> BaseException:
    """`err` if it survives pickling (to come back from a worker), else a RuntimeError with
    its message."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


@contextmanager
def _job_logs(paths: Sequence[Path]) -> Iterator[None]:
    """Append the group's log records to each member job's log file while it trains, and show
    them on the console in the same format (Hydra's own lines keep its `[HYDRA]` format)."""
    root = logging.getLogger()
    handlers = [logging.FileHandler(path, mode="a") for path in sorted(set(paths))]
    formatter = logging.Formatter(LOG_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
    formats = [h.formatter for h in consoles]
    for console in consoles:
        console.setFormatter(formatter)
    try:
        yield
    finally:
        for console, previous in zip(consoles, formats, strict=True):
            console.setFormatter(previous)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()

"""Where a sweep's lockstep groups train: in this process one after another, on worker processes
pinned to devices (`placement`), or as SLURM jobs through submitit.

Each group trains with `recipe.train`, which skips finished runs and resumes checkpointed ones,
so a requeued SLURM job or a relaunched sweep continues where the runs stopped. A group that
fails comes back as one exception per run: a user error (`UserError`) is logged as one line,
anything else with its traceback.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import pickle
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit
from omegaconf import OmegaConf

from xmodal_ft.errors import UserError
from xmodal_ft.placement import Device
from xmodal_ft.runspec import RunSpec

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format
Outcome = list[float | BaseException]  # each run's validation metric, or why it failed


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
            return [_portable(err)] * len(group.specs)


def here(groups: Sequence[Group], max_runs: int | None) -> list[Outcome]:
    """Train the groups in this process, one after another."""
    outcomes = []
    for group in groups:
        log.info(f"Training jobs {group.jobs} together")
        outcomes.append(train_group(group, max_runs))
    return outcomes


def on_devices(
    groups: Sequence[Group], devices: Sequence[Device], max_runs: int | None
) -> list[Outcome]:
    """Train the groups on one worker process per device (`Workers`)."""
    with Workers(devices) as workers:
        return workers.train(groups, max_runs)


class Workers:
    """One worker process per device, started at once, so that their imports (torch,
    transformers: seconds) overlap the launcher's job set-up. `train` gives each group to the
    next free worker, largest groups first. Workers on CPU core sets share the host's memory
    (`max_runs` is sized from their share of it); each card's worker has the card's memory."""

    def __init__(self, devices: Sequence[Device]):
        self.devices = list(devices)
        self.pools = [_worker(device) for device in self.devices]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the workers. Their work is on disk (results written atomically, leases released)
        by the time they are idle, so each ends at once (`os._exit`) rather than tearing down
        torch and transformers: about 1 s per worker."""
        for pool in self.pools:
            pool.submit(os._exit, 0)
        for pool in self.pools:
            pool.shutdown(cancel_futures=True)

    def train(self, groups: Sequence[Group], max_runs: int | None) -> list[Outcome]:
        share = 1.0 / len(self.devices) if self.devices[0].kind == "cpu" else 1.0
        todo = deque(sorted(range(len(groups)), key=lambda g: -len(groups[g].specs)))
        outcomes: list[Outcome] = [[] for _ in groups]
        lock = threading.Lock()

        def serve(d: int) -> None:
            label = self.devices[d].label
            while True:
                with lock:
                    if not todo:
                        return
                    g = todo.popleft()
                group = groups[g]
                log.info(f"Training jobs {group.jobs} together on {label}")
                try:
                    outcomes[g] = (
                        self.pools[d]
                        .submit(train_group, _sendable(group), max_runs, share)
                        .result()
                    )
                except BrokenProcessPool as err:  # the worker died (killed, out of memory)
                    log.error(f"jobs {group.jobs}: the worker on {label} died ({err})")
                    outcomes[g] = [err] * len(group.specs)
                    self.pools[d].shutdown(cancel_futures=True)
                    self.pools[d] = _worker(self.devices[d])
                except Exception as err:  # a bug on the way to the worker
                    log.exception(f"jobs {group.jobs} failed")
                    outcomes[g] = [_portable(err)] * len(group.specs)

        servers = [
            threading.Thread(target=serve, args=(d,), daemon=True) for d in range(len(self.pools))
        ]
        for server in servers:
            server.start()
        for server in servers:
            server.join()
        return outcomes


def _worker(device: Device) -> ProcessPoolExecutor:
    """A fresh process pinned to `device` (spawned: no CUDA state is inherited), starting now."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=context, initializer=_start, initargs=(device,))
    pool.submit(importlib.import_module, "xmodal_ft.lockstep.stack")  # what a group needs, imported
    return pool


def _start(device: Device) -> None:
    """A worker's set-up: pinned to its device, its records shown on the console with the
    device's name."""
    device.pin()
    _console(device.label)


class _LabelledConsole(logging.StreamHandler):
    """A worker's console: the job log's format with the worker's device in place of the
    logger's name (records of several workers interleave on one terminal)."""

    def __init__(self, label: str):
        super().__init__()
        self.setFormatter(logging.Formatter(LOG_FORMAT.replace("%(name)s", label)))


def _console(label: str) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(_LabelledConsole(label))


def on_slurm(
    groups: Sequence[Group], max_runs: int | None, options: dict[str, Any], folder: Path
) -> list[Outcome]:
    """Submit one SLURM job per group (a job array) and wait for them. A job that times out
    or is preempted is requeued and continues from its runs' checkpoints (`GroupJob`)."""
    options = dict(options)
    cluster = options.pop("cluster", "slurm")
    timeouts = {f"{cluster}_max_num_timeout": options.pop("max_num_timeout", 3)}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **timeouts)
    executor.update_parameters(**_submitit_parameters(options))
    with executor.batch():
        jobs = [executor.submit(GroupJob(), _sendable(group), max_runs) for group in groups]
    for group, job in zip(groups, jobs, strict=True):
        log.info(f"jobs {group.jobs}: {cluster} job {job.job_id} ({len(group.specs)} runs)")
    outcomes = []
    for group, job in zip(groups, jobs, strict=True):
        try:
            outcomes.append(job.result())
        except Exception as err:  # the job failed outside training: its log says why
            log.error(f"jobs {group.jobs}: {cluster} job {job.job_id} failed: {err}")
            outcomes.append([_portable(err)] * len(group.specs))
    return outcomes


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
        _console("slurm")
        return train_group(group, max_runs)


def _sendable(group: Group) -> Group:
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


def _portable(err: BaseException) -> BaseException:
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

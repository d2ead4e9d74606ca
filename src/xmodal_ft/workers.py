"""Worker processes pinned to devices (`placement`), each training the lockstep groups given
to it, with bounded waits.

`Workers(devices)` starts one spawned process per device at once, so that their imports (torch,
transformers: seconds) overlap the launcher's job set-up. `train(groups)` gives each group to the
next free worker (`Schedule`: largest first; the last groups are cut among devices that would
otherwise idle). The launcher waits for a group while its worker lives and its runs make
progress (`watch`): a worker that dies (killed, out of memory) or makes no progress for twice
the liveness timeout (a hung CUDA call, stuck I/O, a stopped process) is killed and replaced, and
its group retried on the fresh worker, which resumes its runs from their checkpoints; after
`RETRIES` retries the group's runs fail with a message that says what was given up on. Closing
the workers never raises, whatever state they are in.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from xmodal_ft import dispatch, watch
from xmodal_ft.dispatch import RETRIES, GaveUp, Group, Outcome
from xmodal_ft.placement import Device

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """A worker process ended while it trained a group."""


class WorkerHung(RuntimeError):
    """A worker's group made no progress for `watch.hung_after_s()`."""


def on_devices(
    groups: Sequence[Group], devices: Sequence[Device], max_runs: int | None
) -> list[Outcome]:
    """Train the groups on one worker process per device (`Workers`)."""
    with Workers(devices) as workers:
        return workers.train(groups, max_runs)


def memory_share(device: Device, devices: Sequence[Device]) -> float:
    """The share of its device's memory a worker sizes its groups by (`lockstep.sizing.max_runs`):
    the workers on CPU core sets share the host's memory; a card's worker has its card's."""
    if device.kind == "cuda":
        return 1.0
    return 1.0 / sum(d.kind == "cpu" for d in devices)


class Workers:
    """One worker process per device (see the module docstring)."""

    def __init__(self, devices: Sequence[Device]):
        self.devices = list(devices)
        self.workers = [_Worker(device) for device in self.devices]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the workers, dead or alive; never raises. Their work is on disk (results written
        atomically, leases released) by the time they are idle, so each ends at once."""
        for worker in self.workers:
            worker.stop()

    def train(self, groups: Sequence[Group], max_runs: int | None) -> list[Outcome]:
        """Each group's outcome, in `groups`' order (see the module docstring)."""
        schedule = Schedule(groups, len(self.devices))
        values: dict[int, float | BaseException] = {}

        def serve(d: int) -> None:
            while (group := schedule.next(d)) is not None:
                try:
                    outcome = self._train_on(d, group, max_runs)
                finally:
                    schedule.done(d)
                values.update(zip(group.index, outcome, strict=True))

        servers = [threading.Thread(target=serve, args=(d,)) for d in range(len(self.devices))]
        for server in servers:
            server.start()
        for server in servers:
            server.join()
        return [[values[i] for i in group.index] for group in groups]

    def _train_on(self, d: int, group: Group, max_runs: int | None) -> Outcome:
        """`group` on device `d`'s worker, retried on a fresh worker when it dies or hangs."""
        device = self.devices[d]
        share = memory_share(device, self.devices)
        for attempt in range(RETRIES + 1):
            log.info(f"Training jobs {group.jobs} together on {device.label}")
            try:
                return self.workers[d].train(group, max_runs, share)
            except (WorkerDied, WorkerHung) as err:
                again = "; retrying on a fresh worker" if attempt < RETRIES else ""
                log.error(f"jobs {group.jobs}: {err}{again}")
            except Exception as err:  # a bug on the way to the worker (the group unsent)
                log.exception(f"jobs {group.jobs} failed")
                self.workers[d].stop()
                self.workers[d] = _Worker(device)
                return [dispatch.portable(err)] * len(group.specs)
            self.workers[d].stop()
            self.workers[d] = _Worker(device)
        message = (
            f"gave up on jobs {group.jobs} on {device.label}: its worker died or hung "
            f"{RETRIES + 1} times (see the log above)"
        )
        log.error(message)
        return [GaveUp(message)] * len(group.specs)


class _Worker:
    """A spawned process pinned to `device` (no CUDA state is inherited), starting now."""

    def __init__(self, device: Device):
        context = multiprocessing.get_context("spawn")
        self.device = device
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(device, child), name=f"xmodal-ft {device.label}", daemon=True
        )
        self.process.start()
        child.close()
        self.spawned = time.time()

    def train(self, group: Group, max_runs: int | None, share: float) -> Outcome:
        """Train `group` here; raises `WorkerDied` or `WorkerHung` (see the module docstring)."""
        try:
            self.conn.send((dispatch.sendable(group), max_runs, share))
        except OSError as err:
            raise self._died() from err
        run_dirs = [spec.run_dir for spec in group.specs]
        started = None
        while True:
            try:
                if self.conn.poll(watch.poll_s()):
                    kind, *payload = self.conn.recv()
                    if kind == "done":
                        return payload[0]
                    started = time.time()  # the worker has its group (its imports are done)
                    continue
            except (EOFError, OSError):
                raise self._died() from None
            if not self.process.is_alive():
                raise self._died()
            if started is None:
                if time.time() - self.spawned > watch.startup_s():
                    raise WorkerHung(
                        f"the worker on {self.device.label} did not start within "
                        f"{watch.startup_s():.0f} s: killed"
                    )
            elif (idle := watch.stalled(run_dirs, since=started)) is not None:
                raise WorkerHung(
                    f"no progress on {self.device.label} for {idle:.0f} s (over twice the "
                    f"liveness timeout): its worker (pid {self.process.pid}) was killed"
                )

    def _died(self) -> WorkerDied:
        self.process.join(timeout=5)
        code = self.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return WorkerDied(f"the worker on {self.device.label} died ({how})")

    def stop(self) -> None:
        """End the process: asked to, then killed if it does not (hung, stopped); never
        raises."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


def _serve(device: Device, conn: Connection) -> None:
    """A worker's life: pinned to its device, its records on the console with the device's
    name; it trains each group it receives and sends back the outcome. It ends when told to, or
    when the launcher is gone (after the group in hand: its results are on disk)."""
    device.pin()
    dispatch.console(device.label)
    importlib.import_module("xmodal_ft.lockstep.stack")  # what a group needs, imported while idle
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            task = None
        if task is None:
            os._exit(0)  # not tearing down torch and transformers: about 1 s
        try:
            conn.send(("started",))
            outcome = dispatch.train_group(*task)
            conn.send(("done", outcome))
        except OSError:
            os._exit(0)


class Schedule:
    """Which group each free device trains next: the largest queued one. When a device takes a
    group and fewer groups stay queued than there are other devices, the group is cut into the
    number of parts that finishes it soonest, given when the other devices free up (per-run
    time estimated from the groups finished so far, as if linear in runs); the parts are queued
    for the devices that free up (9 groups on 8 cards: the 9th is shared among the cards as
    they finish, not trained on one while 7 idle). Groups with a pruner stay whole."""

    def __init__(
        self, groups: Sequence[Group], devices: int, clock: Callable[[], float] = time.monotonic
    ):
        self.queue = sorted(groups, key=lambda g: -len(g.specs))
        self.devices = devices
        self.clock = clock
        self.running: dict[int, tuple[float, int]] = {}  # device -> (start, runs)
        self.finished: list[tuple[float, int]] = []  # (seconds, runs) of groups done
        self.changed = threading.Condition()

    def next(self, d: int) -> Group | None:
        """The group device `d` trains next, waiting while the queue is empty but groups run
        (a device that takes one may cut it); None once all is done."""
        with self.changed:
            while (group := self.take(d)) is None and self.running:
                self.changed.wait()
            return group

    def take(self, d: int) -> Group | None:
        """The group device `d` trains next, if one is queued (see the class docstring)."""
        with self.changed:
            if not self.queue:
                return None
            group = self.queue.pop(0)
            parts = self._parts(d, group)
            if parts > 1:
                size, extra = divmod(len(group.specs), parts)
                cuts = [0]
                for i in range(parts):
                    cuts.append(cuts[-1] + size + (i < extra))
                group, *rest = [group.part(a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
                self.queue += rest
                self.changed.notify_all()
            self.running[d] = (self.clock(), len(group.specs))
            return group

    def done(self, d: int) -> None:
        with self.changed:
            start, runs = self.running.pop(d)
            self.finished.append((self.clock() - start, runs))
            self.changed.notify_all()

    def _parts(self, d: int, group: Group) -> int:
        runs = len(group.specs)
        others = self.devices - 1
        if runs < 2 or len(self.queue) >= others or not self.finished or _pruned(group):
            return 1
        per_run = sum(s for s, _ in self.finished) / max(1, sum(n for _, n in self.finished))
        now = self.clock()
        busy = [max(0.0, start + per_run * n - now) for start, n in self.running.values()]
        free_at = sorted(busy + [0.0] * (others - len(busy)))[len(self.queue) :]
        best, parts = per_run * runs, 1
        for k in range(2, min(runs, len(free_at) + 1) + 1):
            span = free_at[k - 2] + per_run * -(-runs // k)
            if span < best:
                best, parts = span, k
        return parts


def _pruned(group: Group) -> bool:
    """Whether the group has a pruner (which judges each LR by all of its seeds together)."""
    spec: Any = group.specs[0]
    return spec is not None and bool(spec.cfg.get("pruner"))

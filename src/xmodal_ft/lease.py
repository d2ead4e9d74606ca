"""Leases: one worker at a time trains a run dir, so concurrent launches, relaunches and requeued
jobs never train one run twice.

A lease is the file `<run_dir>/lease.json` naming its holder (host, pid, start time, a random
token). It is created atomically: a complete temporary file is hard-linked to the lease's name,
which fails when the name exists (atomic on local disks and on NFS, unlike O_EXCL on old NFS).
The holder's heartbeat is the file's mtime, touched every `HEARTBEAT_S` by one daemon thread per
process for all the leases it holds. A lease is stale when its heartbeat is older than
`TIMEOUT_S` (its worker hung, or its host died; the age is this host's clock less the mtime, so
hosts sharing a disk need clocks that agree well within that), or at once when its holder ran on
this host, in this pid namespace, and its pid is gone (a killed run relaunched right away resumes
at once; a container on this host with a pid namespace of its own waits for the timeout), or
when its holder was an earlier attempt of this process's SLURM job (a job requeued after a time
limit or preemption, on any node, continues its runs at once). A stale lease is taken over: the
taker first creates a marker named after the stale holder's token (by the same link), so that
one taker alone removes that lease, then links its own; a taker that loses any step finds a live
lease and leaves the run. A lease is removed on release only while it is still its holder's.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LEASE = "lease.json"
HEARTBEAT_S = 30.0  # seconds between a holder's heartbeats (touches of its lease's mtime)
# A heartbeat older than this marks a lease stale: ten missed heartbeats, far beyond a loaded
# machine's or file server's stall, and the most a requeued job on another host waits.
TIMEOUT_S = 300.0
TAKEOVER_S = 60.0  # a takeover marker this old was left by a taker that died in mid-takeover
HOST = socket.gethostname()


def _pid_namespace() -> int | None:
    """This process's pid namespace (its inode), where Linux tells; pids compare within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


PID_NAMESPACE = _pid_namespace()


def _attempt() -> tuple[str, int] | None:
    """This process's SLURM job and how often SLURM restarted it (requeues keep the job id and
    count up `SLURM_RESTART_COUNT`); None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    return (job, int(os.environ.get("SLURM_RESTART_COUNT") or 0)) if job else None


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and the age of its heartbeat in seconds when read (`pid_namespace`:
    None where the platform has none)."""

    host: str
    pid: int
    started: float
    token: str
    age: float
    pid_namespace: int | None = None
    attempt: tuple[str, int] | None = None  # its SLURM job and restart count


class Held(RuntimeError):
    """The run dir's lease is held by a live worker (`holder`)."""

    def __init__(self, path: Path, holder: Holder):
        super().__init__(
            f"{path.parent} is being trained by pid {holder.pid} on {holder.host} "
            f"(heartbeat {holder.age:.0f} s ago)"
        )
        self.holder = holder


class Lease:
    """A held lease on a run dir; `release()` (or leaving its `with` block) gives it up."""

    def __init__(self, path: Path, token: str):
        self.path = path
        self.token = token
        self.pid = os.getpid()  # a forked child holds no lease: it neither beats nor releases

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def held(self) -> bool:
        """Whether the lease file is still this lease's (not taken over as stale)."""
        holder = _read(self.path)
        return holder is not None and holder.token == self.token

    def release(self) -> None:
        """Stop its heartbeat and remove its file if it is still ours (idempotent)."""
        _heartbeat.remove(self)
        if os.getpid() == self.pid and self.held():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def acquire(run_dir: Path, timeout_s: float = TIMEOUT_S) -> Lease:
    """Take the lease of `run_dir` (created if needed), taking over a stale one (see the module
    docstring); raise `Held` when a live worker holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LEASE
    token = secrets.token_hex(8)
    record = {"host": HOST, "pid": os.getpid(), "started": time.time(), "token": token,
              "pid_namespace": PID_NAMESPACE, "attempt": _attempt()}  # fmt: skip
    while True:
        if _link_new(path, record):
            lease = Lease(path, token)
            _heartbeat.add(lease)
            return lease
        holder = _read(path)
        if holder is None:  # released meanwhile
            continue
        if not _stale(holder, timeout_s):
            raise Held(path, holder)
        if _take_over(path, holder):
            log.info(
                "%s: removed the stale lease of pid %d on %s (heartbeat %.0f s ago)",
                path.parent, holder.pid, holder.host, holder.age,
            )  # fmt: skip
        else:
            time.sleep(0.01)  # another taker is removing it: look again


def live_holder(run_dir: Path, timeout_s: float = TIMEOUT_S) -> Holder | None:
    """The live holder of `run_dir`'s lease; None when the run dir has no lease or a stale one
    (what a sweeper asks before it judges a trial's runs dead)."""
    holder = _read(Path(run_dir) / LEASE)
    return None if holder is None or _stale(holder, timeout_s) else holder


def _stale(holder: Holder, timeout_s: float) -> bool:
    here = holder.host == HOST and holder.pid_namespace == PID_NAMESPACE
    if here and not _alive(holder.pid):
        return True
    ours = _attempt()
    if holder.attempt and ours and holder.attempt[0] == ours[0] and holder.attempt[1] < ours[1]:
        return True  # an earlier attempt of this requeued job
    return holder.age > timeout_s


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a reused pid counts as alive: its lease then
    goes stale by its heartbeat)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _take_over(path: Path, stale: Holder) -> bool:
    """Remove the stale lease at `path` if it is still `stale`'s and no other taker is removing
    it (the marker named after its token decides); True when removed."""
    marker = path.with_name(f".{path.name}.{stale.token}.takeover")
    if not _link_new(marker, {"host": HOST, "pid": os.getpid()}):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - marker.stat().st_mtime > TAKEOVER_S:
                marker.unlink()
        return False
    try:
        current = _read(path)
        if current is None or current.token != stale.token:
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        marker.unlink(missing_ok=True)


def _link_new(path: Path, record: dict[str, object]) -> bool:
    """Create `path` holding `record` as JSON, complete or not at all; False if it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        tmp.write_text(json.dumps(record), encoding="utf-8")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # NFS may report a link it made as failed: the link count tells
            if os.stat(tmp).st_nlink != 2:
                raise
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> Holder | None:
    """The holder recorded at `path` (None: no file). A damaged file is a holder on no host,
    named by its inode and aged by its mtime, so that it goes stale like any other."""
    try:
        with open(path, "rb") as file:  # content and mtime of one file, not of two in turn
            stat = os.fstat(file.fileno())
            text = file.read()
    except FileNotFoundError:
        return None
    age = max(0.0, time.time() - stat.st_mtime)
    try:
        record = json.loads(text)
        return Holder(
            str(record["host"]), int(record["pid"]), float(record["started"]),
            str(record["token"]), age, record.get("pid_namespace"),
            tuple(record["attempt"]) if record.get("attempt") else None,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return Holder("?", -1, 0.0, f"unreadable-{stat.st_ino}", age)


class _Heartbeat:
    """One daemon thread per process touching every held lease each `HEARTBEAT_S`."""

    def __init__(self) -> None:
        self.leases: set[Lease] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()  # set: beat now (and read HEARTBEAT_S again)
        self.thread: threading.Thread | None = None

    def add(self, lease: Lease) -> None:
        with self.lock:
            self.leases.add(lease)
            if self.thread is None or not self.thread.is_alive():  # or lost in a fork
                self.thread = threading.Thread(target=self._run, name="lease-heartbeat")
                self.thread.daemon = True
                self.thread.start()
        self.wake.set()

    def remove(self, lease: Lease) -> None:
        with self.lock:
            self.leases.discard(lease)

    def release_all(self) -> None:
        """Release every lease still held (at interpreter exit)."""
        with self.lock:
            leases = list(self.leases)
        for lease in leases:
            lease.release()

    def _run(self) -> None:
        while True:
            self.wake.wait(HEARTBEAT_S)
            self.wake.clear()
            with self.lock:
                leases = list(self.leases)
            for lease in leases:
                self._beat(lease)

    def _beat(self, lease: Lease) -> None:
        """Touch the lease if it is still ours; a lost one (taken over as stale while this
        process stalled) is reported once and no longer touched."""
        if lease.pid != os.getpid():  # inherited through a fork: the parent's to touch
            self.remove(lease)
            return
        if lease.held():
            with contextlib.suppress(FileNotFoundError):
                os.utime(lease.path)
            return
        self.remove(lease)
        log.warning(
            "lost the lease of %s (taken over as stale: this process stalled for over %.0f s); "
            "another worker may now train this run too",
            lease.path.parent, TIMEOUT_S,
        )  # fmt: skip


_heartbeat = _Heartbeat()
atexit.register(_heartbeat.release_all)

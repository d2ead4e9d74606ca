"""Leases: one worker at a time trains a run dir, so concurrent launches, relaunches and requeued
jobs never train one run twice.

A lease is the file `<run_dir>/lease.json` naming its holder (host, pid, start time, a random
token). It is created atomically: a complete temporary file is hard-linked to the lease's name,
which fails when the name exists (atomic on local disks and on NFS, unlike O_EXCL on old NFS);
where hard links are missing (object-store mounts: s3fs, gcsfuse, blobfuse) it is created with
O_CREAT|O_EXCL instead.

**Liveness is progress.** The file's mtime is the time its holder last made progress: the
training loop calls `progress()` at every optimizer step and every validation or test batch,
and start-up (data building, model loading: calls that report nothing themselves) counts as
progress inside `starting()`, for at most `STARTUP_FACTOR` timeouts. One daemon thread per
process writes that time into the mtime of every lease it holds, every `heartbeat_s()`. A lease
is stale when its holder made no progress for `liveness_s()` (`XMODAL_FT_LIVENESS_S`, default
300 s): a hung CUDA call, stuck I/O, a stopped (SIGSTOP) or dead process, a dead host. The age is
this host's clock less the mtime, so hosts sharing a disk need clocks that agree well within the
timeout. A lease is also stale at once when its holder ran on this host, in this pid namespace,
and its pid is gone (a killed run relaunched right away resumes at once), or when its holder was
an earlier attempt of this process's SLURM job (a requeued job continues its runs at once).

A stale lease is taken over: the taker first creates a marker named after the stale holder's
token (by the same exclusive create), so that one taker alone removes that lease, then creates
its own; a taker that loses any step finds a live lease and leaves the run.

**A holder that lost its lease writes nothing more for its run.** The heartbeat notes a lease
that is no longer its own; `progress()` then raises `Lost`, and so does `check(run_dir)`, which
callers make before writing a checkpoint or results (it touches the lease and reads it back).
The heartbeat survives any OSError (EIO, ESTALE): it logs the first and retries at every beat.

**Removal never hits another holder's lease** (`_remove_if`): the lease is renamed to a name of
its own, its token read there, and a file that turns out not to be the remover's is linked back
to the lease's name (an exclusive create: if a third worker created a lease meanwhile, that one
stays and the displaced holder finds its lease gone and stops writing, so no run trains twice).

For fault tests only, two environment variables (unset in production): `XMODAL_FT_LEASE_EVENTS`
names a file that gets one JSON line per lease event (acquired, taken over, lost, released, each
checked write), and `XMODAL_FT_LEASE_FAULTS=eio:<probability>[:<seed>]` makes lease writes fail
with EIO at random.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from xmodal_ft.heartbeat import (
    HEARTBEAT_S,
    LIVENESS_ENV,
    STARTUP_FACTOR,
    TIMEOUT_S,
    _clock,
    _heartbeat,
    heartbeat_s,
    liveness_s,
)
from xmodal_ft.lease_files import (
    EVENTS_ENV,
    FAULTS_ENV,
    HOST,
    LEASE,
    NO_LINKS,
    TAKEOVER_S,
    Holder,
    _event,
    _link_new,
    _read,
    _remove_if,
    _take_over,
)

__all__ = [
    "EVENTS_ENV", "FAULTS_ENV", "HEARTBEAT_S", "HOST", "LEASE", "LIVENESS_ENV", "NO_LINKS",
    "PID_NAMESPACE", "STARTUP_FACTOR", "TAKEOVER_S", "TIMEOUT_S", "Held", "Holder", "Lease",
    "Lost", "acquire", "check", "heartbeat_s", "live_holder", "liveness_s", "progress",
    "starting",
]  # fmt: skip

log = logging.getLogger(__name__)


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


class Held(RuntimeError):
    """The run dir's lease is held by a live worker (`holder`)."""

    def __init__(self, path: Path, holder: Holder):
        super().__init__(
            f"{path.parent} is being trained by pid {holder.pid} on {holder.host} "
            f"(last progress {holder.age:.0f} s ago)"
        )
        self.holder = holder


class Lost(RuntimeError):
    """This process's lease of a run dir was taken over (it made no progress for the liveness
    timeout, or the file was removed): it writes nothing more for that run."""

    def __init__(self, run_dirs: list[Path]):
        names = ", ".join(map(str, run_dirs))
        super().__init__(f"lost the lease of {names} (another worker now trains it)")
        self.run_dirs = run_dirs


class Lease:
    """A held lease on a run dir; `release()` (or leaving its `with` block) gives it up."""

    def __init__(self, path: Path, token: str):
        self.path = path
        self.token = token
        self.pid = os.getpid()  # a forked child holds no lease: it neither beats nor releases
        self.stamped = 0.0  # the progress time last written to the file's mtime

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
        if os.getpid() != self.pid:
            return
        for attempt in range(4):
            try:
                if _remove_if(self.path, self.token):
                    _event("released", self.path)
                return
            except OSError as err:  # EIO, ESTALE: try again; else it goes stale
                if attempt == 3:
                    log.warning("could not remove the lease %s (%s): it goes stale", self.path, err)
                time.sleep(0.05 * (attempt + 1))


def acquire(run_dir: Path, timeout_s: float | None = None) -> Lease:
    """Take the lease of `run_dir` (created if needed), taking over a stale one (see the module
    docstring); raise `Held` when a live worker holds it. Transient I/O errors are retried."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LEASE
    token = secrets.token_hex(8)
    record = {"host": HOST, "pid": os.getpid(), "started": time.time(), "token": token,
              "pid_namespace": PID_NAMESPACE, "attempt": _attempt()}  # fmt: skip
    _clock.mark()  # taking a lease is progress: a process that waited long is fresh again
    failures = 0
    while True:
        try:
            if _link_new(path, record):
                lease = Lease(path, token)
                _heartbeat.add(lease)
                _event("acquired", path)
                return lease
            holder = _read(path)
            if holder is None:  # released meanwhile
                continue
            if not _stale(holder, timeout_s):
                raise Held(path, holder)
            if _take_over(path, holder):
                _event("took_over", path, stale=holder.token)
                log.info(
                    "%s: removed the stale lease of pid %d on %s (last progress %.0f s ago)",
                    path.parent, holder.pid, holder.host, holder.age,
                )  # fmt: skip
            else:
                time.sleep(0.01)  # another taker is removing it: look again
        except OSError as err:  # EIO, ESTALE: look again a few times
            failures += 1
            if failures > 10:
                raise
            log.warning("%s: %s; retrying", path, err)
            time.sleep(0.05 * failures)


def live_holder(run_dir: Path, timeout_s: float | None = None) -> Holder | None:
    """The live holder of `run_dir`'s lease: one that made progress within the liveness timeout
    (`timeout_s`, default `liveness_s()`); None when the run dir has no lease or a stale one
    (what a sweeper asks before it judges a trial's runs dead)."""
    holder = _read(Path(run_dir) / LEASE)
    return None if holder is None or _stale(holder, timeout_s) else holder


def progress() -> None:
    """Record progress of this process's training (per optimizer step and per validation or
    test batch): a time check at most. Raises `Lost` once a lease of this process was taken
    over; where the heartbeat has not confirmed the leases for two beats (this process was
    stopped, or its thread is stuck in I/O), it confirms them first."""
    now = _clock.mark()
    if not _heartbeat.leases and not _heartbeat.lost:
        return
    if now - _heartbeat.confirmed > 2 * heartbeat_s():
        _heartbeat.beat_all()
        _heartbeat.unconfirmable()
    _raise_lost()


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """Within the block (data building, model loading), this process counts as making progress
    while it runs, for at most `STARTUP_FACTOR` liveness timeouts."""
    with _clock.lock:
        _clock.busy += 1
        _clock.busy_since = _clock.busy_since or time.time()
    try:
        yield
    finally:
        with _clock.lock:
            _clock.busy -= 1
            if not _clock.busy:
                _clock.busy_since = 0.0
        progress()


def check(run_dir: Path, what: str = "write") -> None:
    """Before writing `what` into `run_dir` (a checkpoint, results): raise `Lost` if this
    process's lease of it is no longer its own. A run dir this process holds no lease of (a
    lone `engine.fit`, a benchmark) passes."""
    path = Path(run_dir) / LEASE
    lease = _heartbeat.owned(path)
    if lease is not None and not _heartbeat.beat(lease):
        _heartbeat.unconfirmable()
    _raise_lost(path)
    if lease is not None:
        _event("write", path, what=what)


def _raise_lost(path: Path | None = None) -> None:
    """Raise `Lost` for the leases lost and not yet reported (or for `path`, if lost)."""
    lost = _heartbeat.take_lost(path)
    if lost:
        raise Lost([p.parent for p in lost])


def _stale(holder: Holder, timeout_s: float | None = None) -> bool:
    here = holder.host == HOST and holder.pid_namespace == PID_NAMESPACE
    if here and not _alive(holder.pid):
        return True
    ours = _attempt()
    if holder.attempt and ours and holder.attempt[0] == ours[0] and holder.attempt[1] < ours[1]:
        return True  # an earlier attempt of this requeued job
    return holder.age > (liveness_s() if timeout_s is None else timeout_s)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a reused pid counts as alive: its lease then
    goes stale by its progress)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True

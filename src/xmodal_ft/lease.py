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

import atexit
import contextlib
import errno
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LEASE = "lease.json"
LIVENESS_ENV = "XMODAL_FT_LIVENESS_S"  # the liveness timeout in seconds
EVENTS_ENV = "XMODAL_FT_LEASE_EVENTS"  # fault tests: a file of lease events
FAULTS_ENV = "XMODAL_FT_LEASE_FAULTS"  # fault tests: eio:<probability>[:<seed>]
# A holder that made no progress for this long is stale: far beyond a step or a validation batch,
# a loaded machine's or file server's stall; the most a requeued job on another host waits.
TIMEOUT_S = 300.0
HEARTBEAT_S = 30.0  # the most seconds between a holder's heartbeats (a tenth of the timeout)
STARTUP_FACTOR = 6  # start-up (`starting()`) counts as progress for this many timeouts
TAKEOVER_S = 60.0  # a takeover marker this old was left by a taker that died in mid-takeover
NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}  # link() unsupported
HOST = socket.gethostname()


def liveness_s() -> float:
    """The liveness timeout: `XMODAL_FT_LIVENESS_S` seconds, else `TIMEOUT_S`."""
    value = os.environ.get(LIVENESS_ENV)
    return float(value) if value else TIMEOUT_S


def heartbeat_s() -> float:
    """Seconds between heartbeats: a tenth of the timeout, at most `HEARTBEAT_S`."""
    return min(HEARTBEAT_S, liveness_s() / 10)


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
    """Who holds a lease, and the seconds since its last progress when read (`pid_namespace`:
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
    _heartbeat.raise_lost()


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
    _heartbeat.raise_lost(path)
    if lease is not None:
        _event("write", path, what=what)


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
        return _remove_if(path, stale.token)
    finally:
        marker.unlink(missing_ok=True)


def _remove_if(path: Path, token: str) -> bool:
    """Remove the lease at `path` if it holds `token`; True when removed. The file is renamed
    aside first and its token read there, so a lease that replaced `token`'s after a first look
    is never deleted: it is linked back (see the module docstring)."""
    holder = _read(path)
    if holder is None or holder.token != token:
        return False
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.removing")
    _fault(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        moved = _read(aside)
        if moved is not None and moved.token == token:
            return True
        _put_back(aside, path)
        return False
    finally:
        aside.unlink(missing_ok=True)


def _put_back(aside: Path, path: Path) -> None:
    """Restore another holder's lease moved to `aside` (unless a new lease took its name)."""
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    except OSError as err:
        if err.errno not in NO_LINKS:
            raise
        with contextlib.suppress(FileExistsError):
            _create_exclusive(path, aside.read_bytes())


def _link_new(path: Path, record: dict[str, object]) -> bool:
    """Create `path` holding `record` as JSON, complete or not at all; False if it exists."""
    data = json.dumps(record).encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        tmp.write_bytes(data)
        _fault(path)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if os.stat(tmp).st_nlink == 2:  # NFS may report a link it made as failed
                return True
            if err.errno not in NO_LINKS:
                raise
            _no_links(path, err)
            try:
                _create_exclusive(path, data)
            except FileExistsError:
                return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, data: bytes) -> None:
    """Create `path` with `data` (O_CREAT|O_EXCL: FileExistsError if it exists). A reader may
    see it empty for a moment: an unreadable lease is a live holder until its mtime ages."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


_warned_links = False


def _no_links(path: Path, err: OSError) -> None:
    global _warned_links
    if not _warned_links:
        _warned_links = True
        log.info("%s: no hard links here (%s); leases use exclusive creates", path.parent, err)


def _read(path: Path) -> Holder | None:
    """The holder recorded at `path` (None: no file). A damaged file is a holder on no host,
    named by its inode and aged by its mtime, so that it goes stale like any other."""
    try:
        with open(path, "rb") as file:  # content and mtime of one file, not of two in turn
            stat = os.fstat(file.fileno())
            text = file.read()
    except FileNotFoundError:
        return None
    return _holder(text, stat)


def _holder(text: bytes, stat: os.stat_result) -> Holder:
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


class _Clock:
    """This process's last progress (wall time) and whether it is starting up."""

    def __init__(self) -> None:
        self.last = time.time()
        self.busy = 0  # nested `starting()` blocks
        self.busy_since = 0.0
        self.lock = threading.Lock()

    def mark(self) -> float:
        self.last = time.time()
        return self.last

    def stamp(self) -> float:
        """The progress time to write: now while starting up (within its allowance), else the
        last progress."""
        now = time.time()
        if self.busy and now - self.busy_since < STARTUP_FACTOR * liveness_s():
            return now
        return self.last


_clock = _Clock()


class _Heartbeat:
    """One daemon thread per process writing its progress into every lease it holds each
    `heartbeat_s()`, and noting leases it lost."""

    def __init__(self) -> None:
        self.leases: set[Lease] = set()
        self.lost: dict[Path, Lease] = {}  # lost leases not yet reported by `raise_lost`
        self.gone: set[Path] = set()  # lease paths this process lost (writes there raise)
        self.lock = threading.Lock()
        self.beating = threading.Lock()  # one beat at a time (thread, `progress`, `check`)
        self.wake = threading.Event()  # set: beat now
        self.thread: threading.Thread | None = None
        self.confirmed = time.time()  # when every lease was last read back as ours
        self.errors: set[str] = set()  # I/O errors already reported
        self.exit_registered = False

    def add(self, lease: Lease) -> None:
        with self.lock:
            if not self.leases:
                self.confirmed = time.time()  # acquiring it confirmed it
            self.leases.add(lease)
            self.gone.discard(lease.path)
            self.lost.pop(lease.path, None)
            if not self.exit_registered:  # the one place: when this process first holds one
                atexit.register(self.release_all)
                self.exit_registered = True
            if self.thread is None or not self.thread.is_alive():  # or lost in a fork
                self.thread = threading.Thread(target=self._run, name="lease-heartbeat")
                self.thread.daemon = True
                self.thread.start()
        self.wake.set()

    def remove(self, lease: Lease) -> None:
        """Stop beating `lease`; a released lease's loss is no longer reported."""
        with self.lock:
            self.leases.discard(lease)
            if self.lost.get(lease.path) is lease:
                del self.lost[lease.path]

    def owned(self, path: Path) -> Lease | None:
        with self.lock:
            return next((le for le in self.leases if le.path == path), None)

    def release_all(self) -> None:
        """Release every lease still held (at interpreter exit)."""
        with self.lock:
            leases = list(self.leases)
        for lease in leases:
            lease.release()

    def raise_lost(self, path: Path | None = None) -> None:
        """Raise `Lost` for the leases lost and not yet reported (or for `path`, if lost)."""
        with self.lock:
            if path is not None:
                if path not in self.gone:
                    return
                self.lost.pop(path, None)
                lost = [path]
            else:
                lost = list(self.lost)
                self.lost.clear()
        if lost:
            raise Lost([p.parent for p in lost])

    def unconfirmable(self) -> None:
        """Count every lease lost when none could be read back as ours for a whole liveness
        timeout (I/O errors): other workers may have taken them over by now."""
        if time.time() - self.confirmed <= liveness_s():
            return
        with self.lock:
            leases, self.leases = list(self.leases), set()
            for lease in leases:
                self.lost[lease.path] = lease
                self.gone.add(lease.path)
        for lease in leases:
            _event("lost", lease.path)
            log.warning("%s: could not confirm its lease for %.0f s: counted as lost",
                        lease.path.parent, liveness_s())  # fmt: skip

    def _run(self) -> None:
        while True:
            self.wake.wait(heartbeat_s())
            self.wake.clear()
            try:
                self.beat_all()
            except Exception as err:  # noqa: BLE001 (the heartbeat must outlive any surprise)
                self._report(f"lease heartbeat: {type(err).__name__}: {err}")

    def beat_all(self) -> None:
        with self.lock:
            leases = list(self.leases)
        ok = all([self.beat(lease) for lease in leases])
        if ok:
            self.confirmed = time.time()

    def beat(self, lease: Lease) -> bool:
        """Write this process's progress into `lease` if it is still ours (reading the token and
        touching the same open file, so a new holder's file is never touched); note a lease that
        is no longer ours. True when read back as ours; an I/O error is reported once and
        retried at the next beat (a lease that cannot be read for a whole liveness timeout
        counts as lost: `unconfirmable`)."""
        if lease.pid != os.getpid():  # inherited through a fork: the parent's to touch
            self.remove(lease)
            return True
        with self.beating:
            try:
                ours = self._touch(lease)
            except OSError as err:  # the lease could not be read: ownership unconfirmed
                self._report(f"lease heartbeat of {lease.path.parent}: {err}; retrying")
                return False
        if ours:
            return True
        with self.lock:
            self.leases.discard(lease)
            self.lost[lease.path] = lease
            self.gone.add(lease.path)
        _event("lost", lease.path)
        log.warning(
            "lost the lease of %s (no progress recorded for %.0f s, or its file was removed): "
            "this process writes nothing more for that run",
            lease.path.parent, liveness_s(),
        )  # fmt: skip
        return False

    def _touch(self, lease: Lease) -> bool:
        try:
            fd = os.open(lease.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            holder = _holder(os.read(fd, 1 << 16), os.fstat(fd))
            if holder.token != lease.token:
                return False
            stamp = _clock.stamp()
            if stamp > lease.stamped:
                try:
                    _fault(lease.path)
                    os.utime(fd, (stamp, stamp))
                    lease.stamped = stamp
                except OSError as err:  # still ours (just read); written at the next beat
                    self._report(f"lease heartbeat of {lease.path.parent}: {err}; retrying")
            return True
        finally:
            os.close(fd)

    def _report(self, message: str) -> None:
        """Log an error of the heartbeat once (it keeps retrying)."""
        if message not in self.errors:
            self.errors.add(message)
            log.warning("%s", message)


_heartbeat = _Heartbeat()


def _event(kind: str, path: Path, **extra: object) -> None:
    """Append a lease event to the file named by `XMODAL_FT_LEASE_EVENTS` (fault tests)."""
    target = os.environ.get(EVENTS_ENV)
    if not target:
        return
    line = {"t": time.time(), "kind": kind, "run_dir": str(path.parent), "host": HOST,
            "pid": os.getpid(), **extra}  # fmt: skip
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


_faults: random.Random | None = None


def _fault(path: Path) -> None:
    """Raise EIO at random in a write of the lease at `path` where
    `XMODAL_FT_LEASE_FAULTS=eio:<p>[:<seed>]` is set (fault tests; an event notes each)."""
    global _faults
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return
    kind, probability, *seed = spec.split(":")
    if _faults is None:
        _faults = random.Random(f"{seed[0] if seed else 0}-{os.getpid()}")
    if kind == "eio" and _faults.random() < float(probability):
        _event("fault", path)
        raise OSError(errno.EIO, "Input/output error (injected)")

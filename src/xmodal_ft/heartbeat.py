"""The heartbeat: this process's progress clock, and one daemon thread writing its progress
into the mtime of every lease it holds (`xmodal_ft.lease` has the protocol); the liveness
timeout and the heartbeat period."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from xmodal_ft.lease_files import _event, _fault, _holder

if TYPE_CHECKING:
    from xmodal_ft.lease import Lease

log = logging.getLogger(__name__)

LIVENESS_ENV = "XMODAL_FT_LIVENESS_S"  # the liveness timeout in seconds
# A holder that made no progress for this long is stale: far beyond a step or a validation batch,
# a loaded machine's or file server's stall; the most a requeued job on another host waits.
TIMEOUT_S = 300.0
HEARTBEAT_S = 30.0  # the most seconds between a holder's heartbeats (a tenth of the timeout)
STARTUP_FACTOR = 6  # start-up (`starting()`) counts as progress for this many timeouts


def liveness_s() -> float:
    """The liveness timeout: `XMODAL_FT_LIVENESS_S` seconds, else `TIMEOUT_S`."""
    value = os.environ.get(LIVENESS_ENV)
    return float(value) if value else TIMEOUT_S


def heartbeat_s() -> float:
    """Seconds between heartbeats: a tenth of the timeout, at most `HEARTBEAT_S`."""
    return min(HEARTBEAT_S, liveness_s() / 10)


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
        self.lost: dict[Path, Lease] = {}  # lost leases not yet reported by `take_lost`
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

    def take_lost(self, path: Path | None = None) -> list[Path]:
        """The leases lost and not yet reported (or `path`, if lost), now reported (the caller
        raises `lease.Lost` for them)."""
        with self.lock:
            if path is not None:
                if path not in self.gone:
                    return []
                self.lost.pop(path, None)
                return [path]
            lost = list(self.lost)
            self.lost.clear()
        return lost

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

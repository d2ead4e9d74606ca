"""Lease files: the record `<run_dir>/lease.json` of its holder, created complete or not at all,
removed only when its token is the remover's, taken over through a marker, and read back
(`xmodal_ft.lease` has the protocol); fault tests' event log and injected EIO."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LEASE = "lease.json"
EVENTS_ENV = "XMODAL_FT_LEASE_EVENTS"  # fault tests: a file of lease events
FAULTS_ENV = "XMODAL_FT_LEASE_FAULTS"  # fault tests: eio:<probability>[:<seed>]
TAKEOVER_S = 60.0  # a takeover marker this old was left by a taker that died in mid-takeover
NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}  # link() unsupported
HOST = socket.gethostname()


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

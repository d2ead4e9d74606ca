"""Bounded waits: a launcher waiting for a group (a device worker, a SLURM job) gives up on it
once its runs make no progress for longer than the liveness timeout allows.

A group's progress is read from its run dirs: the mtime of each run's lease (its holder's last
progress, `xmodal_ft.lease`) and of its results.json (written when the run finishes), whichever
worker holds the run: a group waiting for runs another live worker trains counts as progressing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from xmodal_ft import lease
from xmodal_ft.record.results import RESULTS

STARTUP_FLOOR_S = 120.0  # a worker's start (spawn, imports) is never judged sooner


def hung_after_s() -> float:
    """A group whose runs made no progress for this long is hung: twice the liveness timeout,
    so that a worker waiting for a stale holder has taken it over first."""
    return 2 * lease.liveness_s()


def startup_s() -> float:
    """The most a worker may take to start (process start, imports) before its first group."""
    return max(lease.STARTUP_FACTOR * lease.liveness_s(), STARTUP_FLOOR_S)


def poll_s() -> float:
    """Seconds between a launcher's looks at its groups."""
    return max(0.1, min(lease.heartbeat_s(), 5.0))


def last_progress(run_dirs: Iterable[Path], since: float) -> float:
    """The latest progress recorded in `run_dirs` (their leases' and results' mtimes), at
    least `since`."""
    latest = since
    for run_dir in run_dirs:
        for name in (lease.LEASE, RESULTS):
            try:
                latest = max(latest, (run_dir / name).stat().st_mtime)
            except OSError:  # absent (not started, released), or unreadable for now
                continue
    return latest


def stalled(run_dirs: Iterable[Path], since: float) -> float | None:
    """Seconds since the last progress in `run_dirs` (at least since `since`) when that is over
    `hung_after_s()`; else None."""
    idle = time.time() - last_progress(run_dirs, since)
    return idle if idle > hung_after_s() else None

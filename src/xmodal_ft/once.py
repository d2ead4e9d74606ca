"""Each run trained once among workers: train the runs whose leases this worker takes, and wait
for the others, which live workers hold, to finish, so that every run's value comes back.

`train(run_dirs, finished, train_held)` repeats, until every run has its value: runs whose dirs
hold complete results give theirs (`finished`); of the others, this worker takes the leases
no live worker holds and trains those runs (`train_held`, leases held until it returns); if a
live worker holds every run left, this worker waits, with no lease of its own, until one of them
finishes or its holder goes stale (no progress within the liveness timeout: `lease`), which it
then takes over. A wait is thus bounded by its holders' liveness. A lease lost while training
(`lease.Lost`) sends its runs back to the waiting: the new holder finishes them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from xmodal_ft import lease

log = logging.getLogger(__name__)


def train(
    run_dirs: Sequence[Path],
    finished: Callable[[int], float | None],
    train_held: Callable[[list[int]], list[float]],
) -> list[float]:
    """Each run's value (see the module docstring): `finished(i)` gives run i's value if its
    dir holds complete results (else None); `train_held(runs)` trains runs whose leases are
    held and returns their values."""
    values: dict[int, float] = {}
    while len(values) < len(run_dirs):
        held: dict[int, lease.Holder] = {}
        with contextlib.ExitStack() as leases:
            mine = []
            for i in _unfinished(run_dirs, values, finished):
                try:
                    leases.enter_context(lease.acquire(run_dirs[i]))
                except lease.Held as err:
                    held[i] = err.holder
                    continue
                if not _found(i, values, finished):  # finished between the look and the lease
                    mine.append(i)
            if mine:
                try:
                    values.update(zip(mine, train_held(mine), strict=True))
                except lease.Lost as lost:
                    log.warning("%s: its new holder finishes it", lost)
                continue
        if held:
            _wait(run_dirs, held, values, finished)
    return [values[i] for i in range(len(run_dirs))]


def _unfinished(
    run_dirs: Sequence[Path], values: dict[int, float], finished: Callable[[int], float | None]
) -> list[int]:
    return [i for i in range(len(run_dirs)) if i not in values and not _found(i, values, finished)]


def _found(i: int, values: dict[int, float], finished: Callable[[int], float | None]) -> bool:
    value = finished(i)
    if value is not None:
        values[i] = value
    return value is not None


def _wait(
    run_dirs: Sequence[Path],
    held: dict[int, lease.Holder],
    values: dict[int, float],
    finished: Callable[[int], float | None],
) -> None:
    """Until one of the `held` runs finishes, or its lease is free or stale (to be taken)."""
    for i, holder in held.items():
        log.info(
            "waiting for %s (trained by pid %d on %s, last progress %.0f s ago; it is taken "
            "over after %.0f s without progress)",
            run_dirs[i], holder.pid, holder.host, holder.age, lease.liveness_s(),
        )  # fmt: skip
    poll = min(1.0, lease.liveness_s() / 10)
    while True:
        for i in held:
            if _found(i, values, finished) or lease.live_holder(run_dirs[i]) is None:
                return
        time.sleep(poll)

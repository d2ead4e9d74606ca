"""Torch's intra-op thread count for a run: the cores it may run on (default), a number, or
"auto" (the cores free at its start); a resumed run keeps the count it trained on."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_DEFAULT_THREADS = torch.get_num_threads()  # torch's own default (physical cores, OMP_NUM_THREADS)


def cores() -> int:
    """The cores this process may run on: its CPU affinity (a launcher's core set, `taskset`),
    at most torch's default thread count; torch's default where affinity is unknown (macOS)."""
    try:
        return max(1, min(len(os.sched_getaffinity(0)), _DEFAULT_THREADS))
    except AttributeError:
        return _DEFAULT_THREADS


def set_threads(threads: int | str | None, resumed: Collection[int] = ()) -> int:
    """Set torch's intra-op threads for a run; return the count in use.

    `threads`: a number; None (the default): `cores()`, fixed by the machine and the process's
    placement, so one command gives one result on a machine; "auto": the cores that other
    processes leave free when the run starts (at least one), so it depends on the load: every
    core on a quiet machine, fewer beside parallel sweep jobs or other work, where surplus OpenMP
    threads spin-wait on descheduled ones and slow runs down 5-80x (small models; and lockstep
    groups of any model: 27 MiniLM FPT runs took 10 s a step on two threads beside other work
    and 0.8 s on one).
    `resumed`: the counts that runs resumed from checkpoints trained on. They keep that count,
    unless `threads` is a different number or this process may run on fewer cores: then (or
    when the runs trained on different counts) a warning names both counts, since the results
    may then differ in the last digits from an uninterrupted run's.
    """
    count = _count(threads)
    before = sorted(set(resumed))
    if len(before) == 1 and before[0] <= cores() and not isinstance(threads, int):
        count = before[0]
    elif before and before != [count]:
        if len(before) > 1:
            why = "runs trained together share one count"
        elif isinstance(threads, int):
            why = f"threads={threads} is set"
        else:
            why = f"this process may run on {cores()} cores"
        log.warning(
            "resumed run(s) trained on %s thread(s) before and continue on %d (%s): results may "
            "differ in the last digits from an uninterrupted run's",
            " and ".join(map(str, before)), count, why,
        )  # fmt: skip
    torch.set_num_threads(count)
    return torch.get_num_threads()


def _count(threads: int | str | None) -> int:
    if threads == "auto":
        return max(1, cores() - _busy())
    return cores() if threads is None else int(threads)


def _busy(samples: int = 3, interval_s: float = 0.01) -> int:
    """Runnable threads of other processes: the kernel's count less this process's own.

    The minimum over a few samples ignores blips; 0 where /proc is not available.
    """
    counts = []
    for _ in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            own = sum(_state(stat) == "R" for stat in Path("/proc/self/task").glob("*/stat"))
        except (OSError, IndexError, ValueError):
            return 0
        counts.append(running - own)
        time.sleep(interval_s)
    return max(0, min(counts))


def _state(stat: Path) -> str:
    """A thread's scheduler state letter (R: running) from its /proc stat file."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # the thread ended meanwhile
        return ""

"""Torch's intra-op thread count for a run: a number, torch's default, or "auto"."""

from __future__ import annotations

import time
from pathlib import Path

import torch

_DEFAULT_THREADS = torch.get_num_threads()


def set_threads(threads: int | str | None) -> int:
    """Set torch's intra-op threads: a number, None (torch's default), or "auto".

    "auto" gives the run the cores that other processes leave free when it starts (at least
    one): every core on a quiet machine, fewer beside parallel sweep jobs or other work, where
    surplus OpenMP threads spin-wait on descheduled ones and slow runs down 5-80x (small models;
    and lockstep groups of any model: 27 MiniLM FPT runs took 10 s a step on two threads beside
    other work and 0.8 s on one). Returns the thread count in use.
    """
    if threads == "auto":
        threads = max(1, _DEFAULT_THREADS - _busy())
    torch.set_num_threads(_DEFAULT_THREADS if threads is None else int(threads))
    return torch.get_num_threads()


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

"""Whether another worker's running trial is dead, judged by its runs' leases: the one liveness
mechanism of runs and trials (`xmodal_ft.lease`; no Optuna heartbeats, no thread of our own).

The worker that asks a trial records its run dirs in the trial (system attribute
`xmodal_run_dirs`: the trial's job dir, or its `seed_<s>` dirs with `seeds`). A trial is *quiet*
while none of them has a live lease (`lease.live_holder`); a running trial another worker holds
is *dead* once this worker has seen it quiet at every look for `grace_period` seconds, looks at
most `grace_period` apart (a worker busy with its own batch for longer starts the clock again, so
that a trial it saw quiet once, before, is not judged on one look). The grace covers a job's start
before it takes its leases and the moments between its seeds. A trial wrongly judged dead (a
worker stalled past the grace) costs no training twice: its retry finds the runs leased or done.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from optuna.trial import FrozenTrial

from xmodal_ft import lease

RUN_DIRS = "xmodal_run_dirs"


def run_dirs(job_dir: Path, seeds: Sequence[int] | None) -> list[str]:
    """Where a job trains: its dir, or one dir per seed (as `xmodal_ft.recipe.run` lays them)."""
    job_dir = job_dir.absolute()
    if not seeds:
        return [str(job_dir)]
    return [str(job_dir / f"seed_{seed}") for seed in seeds]


def live(trial: FrozenTrial) -> bool:
    """Whether one of the trial's run dirs has a live lease."""
    return any(lease.live_holder(Path(d)) for d in trial.system_attrs.get(RUN_DIRS, ()))


class Watch:
    """This worker's look at other workers' running trials: which are dead."""

    def __init__(self, grace_period: float, clock=time.monotonic) -> None:
        self.grace_period = grace_period
        self.clock = clock
        self._quiet_since: dict[int, float] = {}  # trial number -> first quiet look
        self._last_look = -float("inf")

    def dead(self, running: Iterable[FrozenTrial]) -> list[FrozenTrial]:
        """The trials of `running` (others' running trials) judged dead at this look."""
        now = self.clock()
        if now - self._last_look > self.grace_period:  # not watched in between: start again
            self._quiet_since.clear()
        self._last_look = now
        found, quiet = [], {}
        for trial in running:
            if live(trial):
                continue
            quiet[trial.number] = since = self._quiet_since.get(trial.number, now)
            if now - since >= self.grace_period:
                found.append(trial)
        self._quiet_since = quiet
        return found

    def quiet_for(self, number: int) -> float:
        """Seconds trial `number` has been seen quiet (0: live, or not seen)."""
        since = self._quiet_since.get(number)
        return 0.0 if since is None else self.clock() - since

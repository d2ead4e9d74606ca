"""Fault injection: a small sweep (`train.py -m`, tiny_gpt2 on digits, 2 LRs x 2 seeds) under
one seeded random fault per scenario, checked against the same sweep uninterrupted.

Launchers: the basic launcher (one process), lockstep on two one-core CPU devices (a launcher
and two worker processes), `lockstep_slurm` through submitit's local executor (a launcher and one
job per group). Faults (`FAULTS`), each at a seeded random moment once the target trains:

- `kill-worker`: SIGKILL of a training process (a device worker, a group job's task; the basic
  launcher trains in its own process, so there it is the launcher); relaunched if the command
  died with it.
- `kill-launcher`: SIGKILL of the `train.py` process, then the same command again (a device
  worker or job it left behind finishes its group; the relaunch waits for it or resumes).
- `stop-worker`: SIGSTOP of a training process for 2.2-3 liveness timeouts, then SIGCONT (the
  basic launcher's runs are then shared with a duplicate launch started with it, which takes
  them over; a device worker or job is killed by its launcher after two timeouts and retried).
- `lease-eio`: one lease write in five fails with EIO (`XMODAL_FT_LEASE_FAULTS`).
- `duplicate`: the same command twice at once, into one sweep dir.
- `relaunch`: the command again after it finished: nothing trains.

Invariants (`Outcome.problems` lists each breach): every run finishes exactly once (its results
are written once, by the holder of its lease: the lease events of `XMODAL_FT_LEASE_EVENTS` name
each write and holder), its numbers equal the uninterrupted sweep's, no process ends on a
traceback, every command ends within `BOUND_S` (else it is killed and counted as a hang).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIVENESS_S = 3.0  # the liveness timeout of the faulted sweeps (XMODAL_FT_LIVENESS_S)
BOUND_S = 300.0  # every command ends within this
LRS, SEEDS = (1e-3, 1e-2), (0, 1)
SWEEP = ["model=tiny_gpt2", "variant=unfrozen_random", "task=digits", "task.n_train=64",
         "max_steps=80", "eval_every=20", "checkpoint_every=10", "log_every=5", "threads=1",
         "progress=false", "cache_dir=null"]  # fmt: skip
GRID = [f"lr={','.join(map(str, LRS))}", f"seed={','.join(map(str, SEEDS))}"]


@dataclass(frozen=True)
class Launcher:
    """A launcher of the suite: its overrides, and a mark of the command line of the processes
    that train under it (None: the launcher's own process trains)."""

    overrides: tuple[str, ...]
    trainer: bytes | None = None


LAUNCHERS = {
    "basic": Launcher(()),
    "lockstep, 2 CPU devices": Launcher(
        ("hydra/launcher=lockstep", "hydra.launcher.devices=2"), b"spawn_main"
    ),
    "lockstep_slurm, local": Launcher(
        ("hydra/launcher=lockstep_slurm", "hydra.launcher.slurm.cluster=local"), b"_submit"
    ),
}
FAULTS = ("kill-worker", "kill-launcher", "stop-worker", "lease-eio", "duplicate", "relaunch")
KEYS = ("val/acc", "test/acc", "best_step", "steps", "history")  # equal to the uninterrupted
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Outcome:
    """One scenario's count of each kind of breach, and what each was."""

    launcher: str
    fault: str
    seed: int
    injected: int = 0  # faults injected (a kill, a stop, a duplicate launch, EIO failures)
    lost: int = 0  # runs without results at the end
    twice: int = 0  # runs whose results were written more than once, or by a non-holder
    crashed: int = 0  # processes that ended on a traceback, commands that failed
    hangs: int = 0  # commands killed at BOUND_S
    differ: int = 0  # runs whose numbers differ from the uninterrupted sweep's
    wall_seconds: float = 0.0  # the commands' wall time, relaunches included
    problems: list[str] = field(default_factory=list)


class Launch:
    """One `train.py -m` command into `sweep_dir`, in its own session, its output in a file."""

    def __init__(self, sweep_dir: Path, launcher: str, env: dict[str, str], name: str):
        self.log = sweep_dir.parent / f"{sweep_dir.name}.{name}.log"
        cmd = [sys.executable, "train.py", "-m", *SWEEP, *GRID, *LAUNCHERS[launcher].overrides,
               f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.started = time.time()
        self.killed = False

    def wait(self, outcome: Outcome) -> int | None:
        """Its exit code; None (and a hang counted) if it ran past `BOUND_S`."""
        try:
            return self.proc.wait(timeout=max(1.0, self.started + BOUND_S - time.time()))
        except subprocess.TimeoutExpired:
            outcome.hangs += 1
            outcome.problems.append(f"{self.log.name}: still running after {BOUND_S:.0f} s")
            self.end()
            return None

    def end(self) -> None:
        """Kill what is left of its session (orphaned workers and jobs included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def environment(events: Path) -> dict[str, str]:
    """The sweeps' environment: offline, a short liveness timeout, lease events into `events`."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HYDRA_FULL_ERROR": "1",
            "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
            "XMODAL_FT_LIVENESS_S": str(LIVENESS_S),
            "XMODAL_FT_LEASE_EVENTS": str(events)}  # fmt: skip


def uninterrupted(launcher: str, root: Path) -> tuple[dict[tuple[float, int], dict], float]:
    """The sweep without faults: each run's results by (lr, seed), and the wall seconds."""
    sweep_dir = root / "uninterrupted"
    launch = Launch(sweep_dir, launcher, environment(root / "uninterrupted.events"), "a")
    outcome = Outcome(launcher, "none", 0)
    if launch.wait(outcome) != 0:
        raise RuntimeError(f"the uninterrupted sweep failed:\n{launch.output()[-3000:]}")
    return results_under(sweep_dir), time.time() - launch.started


def results_under(root: Path) -> dict[tuple[float, int], dict]:
    """The results of the runs in the dirs of `root`, by (lr, seed)."""
    found = [json.loads(p.read_text()) for p in root.glob("*/results.json")]
    return {(r["config"]["lr"], r["config"]["seed"]): r for r in found}


def scenario(
    launcher: str, fault: str, seed: int, root: Path, reference: dict[tuple[float, int], dict]
) -> Outcome:
    """Run `launcher`'s sweep under `fault` at seeded random moments (the module docstring),
    into `root`; count what breaks the invariants."""
    rng = random.Random(f"{launcher}/{fault}/{seed}")
    outcome = Outcome(launcher, fault, seed)
    sweep_dir, events = root / "sweep", root / "events.jsonl"
    env = environment(events)
    if fault == "lease-eio":
        env["XMODAL_FT_LEASE_FAULTS"] = f"eio:0.2:{seed}"
    started = time.time()
    launches = [Launch(sweep_dir, launcher, env, "a")]
    if fault == "duplicate" or (fault == "stop-worker" and LAUNCHERS[launcher].trainer is None):
        launches.append(Launch(sweep_dir, launcher, env, "b"))
        outcome.injected += int(fault == "duplicate")
    try:
        first = launches[0]
        if fault in ("kill-worker", "kill-launcher", "stop-worker"):
            _inject(fault, launcher, launches, events, rng, outcome)
        codes = [launch.wait(outcome) for launch in launches]
        if fault == "relaunch" or (first.killed and codes[0] != 0):
            outcome.injected += int(fault == "relaunch")
            launches.append(Launch(sweep_dir, launcher, env, "again"))
            codes.append(launches[-1].wait(outcome))
        for launch, code in zip(launches, codes, strict=True):
            if code not in (0, None) and not (launch.killed and code == -signal.SIGKILL):
                outcome.crashed += 1
                outcome.problems.append(f"{launch.log.name}: exit code {code}")
        if fault == "relaunch" and "(results in" in launches[-1].output():
            outcome.twice += 1
            outcome.problems.append("the relaunch of a finished sweep trained runs again")
    finally:
        for launch in launches:
            launch.end()
    outcome.wall_seconds = time.time() - started
    outcome.injected += _count(events, "fault")  # each EIO injected into a lease write
    _check(sweep_dir, events, launches, reference, outcome)
    return outcome


def _inject(
    fault: str,
    launcher: str,
    launches: list[Launch],
    events: Path,
    rng: random.Random,
    outcome: Outcome,
) -> None:
    """Once the target trains (it took a lease), wait a seeded random moment, then kill or stop
    it."""
    trainer = LAUNCHERS[launcher].trainer
    launch = launches[0]

    def target() -> int | None:
        """The process to hit, once it trains (took a lease): the first launch itself for
        `kill-launcher` (once any process trains), a launch that trains (where launchers train
        themselves: the first, or its duplicate), else a process below the first launch that
        trains (a device worker, a group job's task)."""
        holders = _holders(events)
        if fault == "kill-launcher" and trainer is not None:
            return launch.proc.pid if holders else None
        if trainer is None:
            return next((ln.proc.pid for ln in launches if ln.proc.pid in holders), None)
        return next((p for p in _descendants(launch.proc.pid, trainer) if p in holders), None)

    deadline = launch.started + BOUND_S / 2
    while (pid := target()) is None and time.time() < deadline and launch.proc.poll() is None:
        time.sleep(0.05)
    if pid is None:
        outcome.problems.append(f"{fault}: no process trained to inject the fault into")
        return
    time.sleep(rng.uniform(0.0, 0.8))
    try:
        if fault == "stop-worker":
            os.kill(pid, signal.SIGSTOP)
            time.sleep(rng.uniform(2.2, 3.0) * LIVENESS_S)
            with contextlib.suppress(ProcessLookupError):  # its launcher may have killed it
                os.kill(pid, signal.SIGCONT)
        else:
            os.kill(pid, signal.SIGKILL)
            for killed in launches:
                killed.killed = killed.killed or pid == killed.proc.pid
        outcome.injected += 1
    except ProcessLookupError:
        outcome.problems.append(f"{fault}: the target ended before the fault")


def _events(path: Path) -> list[dict[str, Any]]:
    """The lease events so far, in time order (a line being written is left out)."""
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return sorted(found, key=lambda e: e["t"])


def _holders(events: Path) -> set[int]:
    """The pids that took a lease so far (the processes that train)."""
    return {e["pid"] for e in _events(events) if e["kind"] == "acquired"}


def _count(events: Path, kind: str) -> int:
    return sum(e["kind"] == kind for e in _events(events))


def _descendants(pid: int, marker: bytes) -> list[int]:
    """The processes below `pid` whose command line holds `marker`."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                todo.append(child)
                try:
                    if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.append(child)
                except OSError:
                    continue
    return found


def _check(
    sweep_dir: Path,
    events: Path,
    launches: list[Launch],
    reference: dict[tuple[float, int], dict],
    outcome: Outcome,
) -> None:
    """Count the breaches of the invariants (module docstring) into `outcome`."""
    found = results_under(sweep_dir)
    for key, expected in reference.items():
        if key not in found:
            outcome.lost += 1
            outcome.problems.append(f"lr={key[0]}, seed={key[1]}: no results")
        elif any(found[key][k] != expected[k] for k in KEYS):
            outcome.differ += 1
            differing = [k for k in KEYS if found[key][k] != expected[k]]
            outcome.problems.append(f"lr={key[0]}, seed={key[1]}: {differing} differ")
    outcome.twice += _written_twice(events, outcome.problems)
    logs = [launch.output() for launch in launches]
    logs += [p.read_text(errors="replace") for p in sweep_dir.glob(".submitit/*/*_log.*")]
    tracebacks = sum(_tracebacks(text) for text in logs)
    if tracebacks:
        outcome.crashed += tracebacks
        outcome.problems.append(f"{tracebacks} traceback(s) in the logs")


def _tracebacks(text: str) -> int:
    """Tracebacks in `text`, but for KeyboardInterrupt: a cancelled local job's controller
    prints that one (submitit's local executor cancels a job with SIGINT)."""
    count = 0
    for chunk in text.split(TRACEBACK)[1:]:
        ending = next((line for line in chunk.splitlines()[1:] if line and line[0] != " "), "")
        count += not ending.startswith("KeyboardInterrupt")
    return count


def _written_twice(events: Path, problems: list[str]) -> int:
    """Runs whose results were written more than once, or that a process wrote to while
    another held the run's lease (from the lease events)."""
    holder: dict[str, int] = {}
    writes: dict[str, int] = {}
    bad: set[str] = set()
    for event in _events(events):
        run = event["run_dir"]
        if event["kind"] == "acquired":
            holder[run] = event["pid"]
        elif event["kind"] == "write":
            if holder.get(run) != event["pid"]:
                bad.add(run)
                problems.append(f"{run}: {event['what']} written by pid {event['pid']}, "
                                f"while pid {holder.get(run)} held it")  # fmt: skip
            if event["what"] == "results":
                writes[run] = writes.get(run, 0) + 1
    for run, count in writes.items():
        if count > 1:
            bad.add(run)
            problems.append(f"{run}: results written {count} times")
    return len(bad)


def faults(quick: bool, seeds: int | None = None) -> dict[str, Any]:
    """The benchmark section: every launcher under every fault (`seeds` seeds each, 1 with
    `quick`), a table row per launcher."""
    import tempfile

    rows, scenarios = [], []
    for launcher in LAUNCHERS:
        with tempfile.TemporaryDirectory() as tmp:
            reference, base = uninterrupted(launcher, Path(tmp))
            done = []
            for fault in FAULTS:
                for seed in range(seeds or (1 if quick else 3)):
                    root = Path(tmp) / f"{fault}-{seed}"
                    root.mkdir()
                    done.append(scenario(launcher, fault, seed, root, reference))
        scenarios += [vars(o) for o in done]
        rows.append(
            {
                "launcher": launcher,
                "scenarios": len(done),
                "faults injected": sum(o.injected for o in done),
                "runs lost": sum(o.lost for o in done),
                "runs trained twice": sum(o.twice for o in done),
                "runs differing": sum(o.differ for o in done),
                "crashed workers": sum(o.crashed for o in done),
                "hangs": sum(o.hangs for o in done),
                "uninterrupted s": base,
                "extra wall s (mean)": sum(o.wall_seconds for o in done) / len(done) - base,
            }
        )
    return {"rows": rows, "scenarios": scenarios, "liveness_s": LIVENESS_S, "bound_s": BOUND_S}

"""Fault injection: a small sweep (`train.py -m`, tiny_gpt2 on digits, 2 LRs x 2 seeds) under
one seeded random fault per scenario, checked against the same sweep uninterrupted.

Launchers: the basic launcher (one process), lockstep on two one-core CPU devices (a launcher
and two worker processes), `lockstep_slurm` through submitit's local executor (a launcher and one
job per group), and two Optuna workers (`sweep=optuna`, the basic launcher each) filling one study
of `N_TRIALS` trials on one journal file or one SQLite file (a trial: `lr` from the grid's two
LRs, both seeds; so two trials share an LR, whose runs one trains and the other waits for).
Faults (`FAULTS`), each at a seeded random moment once the target trains:

- `kill-worker`: SIGKILL of a training process (a device worker, a group job's task; the basic
  launcher trains in its own process, so there it is the launcher); relaunched if the command
  died with it.
- `kill-launcher`: SIGKILL of the `train.py` process, then the same command again (a device
  worker or job it left behind finishes its group; the relaunch waits for it or resumes).
- `stop-worker`: SIGSTOP of a training process for 2.2-3 liveness timeouts, then SIGCONT (the
  basic launcher's runs are then shared with a duplicate launch started with it, which takes
  them over; a device worker or job is killed by its launcher after two timeouts and retried).
- `lease-eio`: one lease write in five fails with EIO (`XMODAL_FT_LEASE_FAULTS`).
- `duplicate`: the same command twice at once, into one sweep dir (an Optuna study: a third
  worker).
- `relaunch`: the command again after it finished: nothing trains.

Invariants (`Outcome.problems` lists each breach): every run finishes exactly once (its results
are written once, by the holder of its lease: the lease events of `XMODAL_FT_LEASE_EVENTS` name
each write and holder), its numbers equal the uninterrupted sweep's, no process ends on a
traceback, every command ends within `BOUND_S` (else it is killed and counted as a hang); an
Optuna study ends with exactly `N_TRIALS` complete trials, each with its runs' results.
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
N_TRIALS = 3  # an Optuna study's trials, whatever its workers
STUDY = ["sweep=optuna", f"lr=choice({','.join(map(str, LRS))})",
         f"seeds=[{','.join(map(str, SEEDS))}]", f"hydra.sweeper.n_trials={N_TRIALS}",
         f"hydra.sweeper.grace_period={LIVENESS_S}"]  # fmt: skip


@dataclass(frozen=True)
class Launcher:
    """A launcher of the suite: its overrides, and a mark of the command line of the processes
    that train under it (None: the launcher's own process trains)."""

    overrides: tuple[str, ...]
    trainer: bytes | None = None
    storage: str | None = None  # Optuna workers on one study: "journal" or "sqlite"

    @property
    def workers(self) -> int:
        """The commands one sweep is: one, or an Optuna study's two workers."""
        return 1 if self.storage is None else 2

    def command(self, sweep_dir: Path) -> list[str]:
        """The `train.py -m` overrides of its sweep into `sweep_dir` (an Optuna study's storage
        beside it)."""
        if self.storage is None:
            return [*SWEEP, *GRID, *self.overrides, f"hydra.sweep.dir={sweep_dir}"]
        return [*SWEEP, *STUDY, f"hydra.sweeper.storage={self.url(sweep_dir)}",
                f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip

    def url(self, sweep_dir: Path) -> str:
        """Its Optuna study's storage: a file beside `sweep_dir`."""
        return f"sqlite:///{sweep_dir}.db" if self.storage == "sqlite" else f"{sweep_dir}.journal"


LAUNCHERS = {
    "basic": Launcher(()),
    "lockstep, 2 CPU devices": Launcher(
        ("hydra/launcher=lockstep", "hydra.launcher.devices=2"), b"spawn_main"
    ),
    "lockstep_slurm, local": Launcher(
        ("hydra/launcher=lockstep_slurm", "hydra.launcher.slurm.cluster=local"), b"_submit"
    ),
    "Optuna, 2 workers, journal file": Launcher((), storage="journal"),
    "Optuna, 2 workers, SQLite file": Launcher((), storage="sqlite"),
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
    study_off: int = 0  # an Optuna study that did not end with N_TRIALS complete trials
    wall_seconds: float = 0.0  # the commands' wall time, relaunches included
    problems: list[str] = field(default_factory=list)


class Launch:
    """One `train.py -m` command into `sweep_dir`, in its own session, its output in a file."""

    def __init__(self, sweep_dir: Path, launcher: str, env: dict[str, str], name: str):
        self.log = sweep_dir.parent / f"{sweep_dir.name}.{name}.log"
        cmd = [sys.executable, "train.py", "-m", *LAUNCHERS[launcher].command(sweep_dir)]
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
    env = environment(root / "uninterrupted.events")
    launches = [Launch(sweep_dir, launcher, env, name) for name in "ab"[: workers(launcher)]]
    outcome = Outcome(launcher, "none", 0)
    for launch in launches:
        if launch.wait(outcome) != 0:
            raise RuntimeError(f"the uninterrupted sweep failed:\n{launch.output()[-3000:]}")
    return results_under(sweep_dir), time.time() - launches[0].started


def workers(launcher: str) -> int:
    return LAUNCHERS[launcher].workers


def results_under(root: Path) -> dict[tuple[float, int], dict]:
    """The results of the runs in the dirs of `root` (an Optuna trial's: in its seed dirs), by
    (lr, seed)."""
    found = [json.loads(p.read_text()) for p in root.rglob("results.json")]
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
    count = workers(launcher)
    launches = [Launch(sweep_dir, launcher, env, name) for name in "ab"[:count]]
    alone = LAUNCHERS[launcher].trainer is None and count == 1  # its runs: no other process's
    if fault == "duplicate" or (fault == "stop-worker" and alone):
        launches.append(Launch(sweep_dir, launcher, env, "abc"[count]))
        outcome.injected += int(fault == "duplicate")
    try:
        if fault in ("kill-worker", "kill-launcher", "stop-worker"):
            _inject(fault, launcher, launches, events, rng, outcome)
        codes = [launch.wait(outcome) for launch in launches]
        died = any(ln.killed and code != 0 for ln, code in zip(launches, codes, strict=True))
        if fault == "relaunch" or died:
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
    storage = LAUNCHERS[outcome.launcher].storage
    expected = reference if storage is None else _trained_runs(sweep_dir, outcome)
    for key in expected:
        if key not in found:
            outcome.lost += 1
            outcome.problems.append(f"lr={key[0]}, seed={key[1]}: no results")
    for key in found:
        if any(found[key][k] != reference[key][k] for k in KEYS):
            outcome.differ += 1
            differing = [k for k in KEYS if found[key][k] != reference[key][k]]
            outcome.problems.append(f"lr={key[0]}, seed={key[1]}: {differing} differ")
    outcome.twice += _written_twice(events, outcome.problems)
    logs = [launch.output() for launch in launches]
    logs += [p.read_text(errors="replace") for p in sweep_dir.glob(".submitit/*/*_log.*")]
    tracebacks = sum(_tracebacks(text) for text in logs)
    if tracebacks:
        outcome.crashed += tracebacks
        outcome.problems.append(f"{tracebacks} traceback(s) in the logs")


def _trained_runs(sweep_dir: Path, outcome: Outcome) -> set[tuple[float, int]]:
    """The runs of an Optuna study's complete trials (each trial: its lr, every seed); a study
    without exactly `N_TRIALS` complete trials is counted."""
    import optuna

    from hydra_plugins.xmodal_optuna_sweeper._storage import open_storage

    url = LAUNCHERS[outcome.launcher].url(sweep_dir)
    trials = optuna.load_study(study_name="xmodal_ft", storage=open_storage(url)).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) != N_TRIALS:
        outcome.study_off += 1
        outcome.problems.append(f"the study holds {len(complete)} complete trials, not "
                                f"{N_TRIALS}: {[t.state.name for t in trials]}")  # fmt: skip
    return {(t.params["lr"], seed) for t in complete for seed in SEEDS}


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
    grid: dict[tuple[float, int], dict] = {}  # every run an Optuna trial may train
    for launcher in LAUNCHERS:
        with tempfile.TemporaryDirectory() as tmp:
            reference, base = uninterrupted(launcher, Path(tmp))
            grid = grid or reference
            done = []
            for fault in FAULTS:
                for seed in range(seeds or (1 if quick else 3)):
                    root = Path(tmp) / f"{fault}-{seed}"
                    root.mkdir()
                    done.append(scenario(launcher, fault, seed, root, grid))
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
                "studies off": sum(o.study_off for o in done) if workers(launcher) > 1 else None,
                "uninterrupted s": base,
                "extra wall s (mean)": sum(o.wall_seconds for o in done) / len(done) - base,
            }
        )
    return {"rows": rows, "scenarios": scenarios, "liveness_s": LIVENESS_S, "bound_s": BOUND_S,
            "n_trials": N_TRIALS}  # fmt: skip

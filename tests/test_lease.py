"""Leases: one worker per run dir. Acquire, release and heldness; one winner among racing
processes; stale leases (old heartbeat, dead local pid) taken over; the recipe skips a run a live
worker holds; two launches of one sweep dir at once train each run exactly once."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, make_cfg, read_results
from xmodal_ft import checkpoint, engine, lease, recipe, run
from xmodal_ft.runspec import RunSpec

HOLD = """
import sys, time
from pathlib import Path
from xmodal_ft import lease
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # racers start together
try:
    lease.acquire(Path(sys.argv[1]))
    print("held", flush=True)
except lease.Held:
    print("lost", flush=True)
sys.stdin.read()  # hold until the test closes stdin (or kills this process)
"""


def hold(run_dir: Path, at: float = 0.0, wait: bool = True) -> subprocess.Popen:
    """A process that takes the lease of `run_dir` (or fails to) at time `at` and keeps running;
    its `outcome` ("held" or "lost") once it tried, when waited for."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), str(at)], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    if wait:
        proc.outcome = proc.stdout.readline().strip()  # type: ignore[attr-defined]
    return proc


def end(proc: subprocess.Popen, kill: bool = False) -> None:
    if kill:
        proc.send_signal(signal.SIGKILL)
    else:
        proc.stdin.close()
    proc.wait(timeout=30)  # reaped: its pid is gone


def test_a_lease_is_held_once_and_free_again_once_released(tmp_path) -> None:
    with lease.acquire(tmp_path) as held:
        record = json.loads((tmp_path / "lease.json").read_text())
        assert (record["host"], record["pid"]) == (lease.HOST, os.getpid())
        assert held.held()
        with pytest.raises(lease.Held, match=f"being trained by pid {os.getpid()} on "):
            lease.acquire(tmp_path)  # a second acquire in the same process
    assert not (tmp_path / "lease.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary files left
    lease.acquire(tmp_path).release()


def test_a_lease_taken_over_is_left_alone_by_its_former_holder(tmp_path) -> None:
    former = lease.acquire(tmp_path)
    (tmp_path / "lease.json").unlink()
    with lease.acquire(tmp_path) as current:
        former.release()  # no longer its file: not removed
        assert current.held() and not former.held()


def test_of_racing_processes_exactly_one_takes_the_lease(tmp_path) -> None:
    start = time.time() + 1.0
    racers = [hold(tmp_path, at=start, wait=False) for _ in range(4)]
    outcomes = [p.stdout.readline().strip() for p in racers]
    try:
        assert sorted(outcomes) == ["held", "lost", "lost", "lost"]
        [winner] = [p for p, outcome in zip(racers, outcomes, strict=True) if outcome == "held"]
        with pytest.raises(lease.Held, match=f"pid {winner.pid} "):
            lease.acquire(tmp_path)  # nor this process
    finally:
        for proc in racers:
            end(proc)


def test_a_lease_whose_heartbeat_is_older_than_the_timeout_is_taken_over(tmp_path) -> None:
    record = {"host": "elsewhere", "pid": os.getpid(), "started": 0.0, "token": "old"}
    path = tmp_path / "lease.json"
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - 10, time.time() - 10))
    with pytest.raises(lease.Held, match=r"pid \d+ on elsewhere \(heartbeat 10 s ago\)"):
        lease.acquire(tmp_path, timeout_s=60)
    with lease.acquire(tmp_path, timeout_s=5) as taken:
        assert taken.held()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor takeover markers


def test_a_damaged_lease_file_goes_stale_by_its_age(tmp_path) -> None:
    path = tmp_path / "lease.json"
    path.write_bytes(b"\x00\xff")
    with pytest.raises(lease.Held, match=r"pid -1 on \?"):
        lease.acquire(tmp_path)
    os.utime(path, (time.time() - 10, time.time() - 10))
    lease.acquire(tmp_path, timeout_s=5).release()


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path) -> None:
    holder = hold(tmp_path)
    assert holder.outcome == "held"  # type: ignore[attr-defined]
    with pytest.raises(lease.Held):
        lease.acquire(tmp_path)
    end(holder, kill=True)
    assert (tmp_path / "lease.json").exists()  # left behind by the kill
    lease.acquire(tmp_path).release()  # no waiting for the heartbeat timeout


def test_a_requeued_slurm_job_takes_over_its_earlier_attempts_live_lease(
    tmp_path, monkeypatch
) -> None:
    """SLURM requeues a job under its id with SLURM_RESTART_COUNT one higher, maybe on another
    node, while the lease of its killed attempt still looks fresh there."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    holder = hold(tmp_path)  # alive, heartbeat fresh: stands in for the attempt on another node
    assert holder.outcome == "held"  # type: ignore[attr-defined]
    with pytest.raises(lease.Held):
        lease.acquire(tmp_path)  # the same attempt, another process of the job: still held
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(lease.Held):
        lease.acquire(tmp_path)  # another job's requeue: still held
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    lease.acquire(tmp_path).release()
    end(holder)


def test_the_heartbeat_keeps_a_held_lease_fresh(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    path = tmp_path / "lease.json"
    with lease.acquire(tmp_path):
        old = time.time() - 100
        os.utime(path, (old, old))
        deadline = time.time() + 10
        while path.stat().st_mtime == old:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.02)
        with pytest.raises(lease.Held):
            lease.acquire(tmp_path, timeout_s=50)


def specs(root: Path, *overrides: str) -> list[RunSpec]:
    """Two runs of one configuration (two LRs) in dirs of `root`."""
    cfgs = [make_cfg("threads=1", "variant=unfrozen_random", f"lr={lr}", *overrides)
            for lr in (1e-3, 1e-2)]  # fmt: skip
    return [RunSpec(cfg, root / f"lr={cfg.lr}") for cfg in cfgs]


def test_a_run_held_by_a_live_worker_is_skipped_with_one_line(tmp_path, caplog) -> None:
    runs = specs(tmp_path)
    holder = hold(runs[0].run_dir)
    try:
        with caplog.at_level(logging.INFO, logger="xmodal_ft"):
            values = recipe.train(runs)
            alone = run(runs[0].cfg, runs[0].run_dir)
        assert sorted(p.name for p in runs[0].run_dir.iterdir()) == ["lease.json"]  # the holder's
    finally:
        end(holder)
    assert not runs[0].run_dir.exists() or not any(runs[0].run_dir.iterdir())  # released at exit
    skips = [r.getMessage() for r in caplog.records if "being trained by" in r.getMessage()]
    assert len(skips) == 2  # one line per run each time it is skipped
    assert skips[0].startswith(f"{runs[0].run_dir} is being trained by pid {holder.pid} on ")
    assert skips[0].endswith("s ago): skipped")
    assert values[0] != values[0] and alone != alone  # nan
    assert read_results(runs[1].run_dir)["val/acc"] == values[1]
    assert not (runs[1].run_dir / "lease.json").exists()  # released once trained


def test_a_run_finished_while_its_lease_was_taken_is_skipped_as_done(
    tmp_path, monkeypatch, caplog
) -> None:
    """The other worker wrote results.json and released the lease between this worker's first
    look and its taking the lease: the run is not trained again."""
    runs = specs(tmp_path)
    done = recipe.train(runs[:1])
    finished = (runs[0].run_dir / "results.json").read_bytes()
    (runs[0].run_dir / "results.json").rename(tmp_path / "aside.json")
    acquire = lease.acquire

    def acquire_after_the_other_worker_finished(run_dir: Path) -> lease.Lease:
        if run_dir == runs[0].run_dir:
            (tmp_path / "aside.json").rename(run_dir / "results.json")
        return acquire(run_dir)

    monkeypatch.setattr(lease, "acquire", acquire_after_the_other_worker_finished)
    with caplog.at_level(logging.INFO, logger="xmodal_ft"):
        values = recipe.train(runs)
    assert values[0] == done[0]
    assert caplog.text.count("holds complete results of this config: skipped") == 1
    assert (runs[0].run_dir / "results.json").read_bytes() == finished
    assert (runs[1].run_dir / "results.json").exists()


def test_leases_are_released_when_training_fails(tmp_path, monkeypatch) -> None:
    runs = specs(tmp_path)

    def fail(*args: object) -> None:
        assert all((spec.run_dir / "lease.json").exists() for spec in runs)
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "train", fail)
    with pytest.raises(RuntimeError, match="boom"):
        recipe.train(runs)
    assert not list(tmp_path.rglob("lease.json"))


class Killed(Exception):
    """Stands in for a kill right after a checkpoint."""


def test_a_killed_runs_lease_is_taken_over_and_the_run_resumes(
    tmp_path, monkeypatch, caplog
) -> None:
    cfg = make_cfg("threads=1", "variant=unfrozen_random", "max_steps=8", "eval_every=2")
    run(cfg, tmp_path / "whole")
    save = checkpoint.save

    def save_then_kill(path, state, *args) -> None:  # noqa: ANN001
        save(path, state, *args)
        if state.step == 4:
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_kill)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        run(cfg, killed)
    monkeypatch.setattr(checkpoint, "save", save)
    end(hold(killed), kill=True)  # the lease a killed process leaves behind
    assert (killed / "lease.json").exists()
    with caplog.at_level(logging.INFO, logger="xmodal_ft"):
        run(cfg, killed)
    assert "removed the stale lease of pid" in caplog.text
    assert "resumed from" in caplog.text and "at step 4" in caplog.text
    whole, resumed = read_results(tmp_path / "whole"), read_results(killed)
    for key in ("config_hash", "val/acc", "test/acc", "best_step", "steps", "history"):
        assert resumed[key] == whole[key], key
    assert not (killed / "lease.json").exists()


LRS, SEEDS = (1e-4, 1e-3, 1e-2), (0, 1)
BASE = ["model=tiny_gpt2", "variant=unfrozen_random", "task=digits", "task.n_train=64",
        "max_steps=8", "eval_every=4", "progress=false", "cache_dir=null", "threads=1"]  # fmt: skip
RUN_KEYS = ("config_hash", "val/acc", "test/acc", "best_step", "steps", "history", "threads")


def launch(sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    """`python train.py -m <BASE> <the LRs and seeds> <overrides> hydra.sweep.dir=<sweep_dir>`."""
    grid = [f"lr={','.join(map(str, LRS))}", f"seed={','.join(map(str, SEEDS))}"]
    cmd = [sys.executable, "train.py", "-m", *BASE, *grid, *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen(
        [*cmd, f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def by_run(run_dirs: list[Path]) -> dict[tuple[float, int], dict]:
    """The runs' results by (lr, seed)."""
    runs = [read_results(run_dir) for run_dir in run_dirs]
    return {(r["config"]["lr"], r["config"]["seed"]): r for r in runs}


@pytest.mark.parametrize("launcher", ["basic", pytest.param("lockstep", marks=pytest.mark.slow)])
def test_two_launches_of_one_sweep_dir_at_once_train_each_run_exactly_once(
    tmp_path, launcher
) -> None:
    """Two `train.py -m` launches into one sweep dir, started together: each run is trained by
    one of them (its "results in" line appears once in their outputs, results.json names its
    pid), with the results of the runs trained alone, as one launch trains them."""
    extra = ["hydra/launcher=lockstep"] if launcher == "lockstep" else []
    together = [launch(tmp_path / "sweep", *extra) for _ in range(2)]
    alone = []
    for lr in LRS:  # meanwhile, the runs one by one in this process, as one launch runs them
        for seed in SEEDS:
            alone.append(tmp_path / "alone" / f"{lr},{seed}")
            run(make_cfg(*BASE, f"lr={lr}", f"seed={seed}"), alone[-1])
    outs = [finish(proc) for proc in together]
    run_dirs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/.hydra"))
    assert len(run_dirs) == len(LRS) * len(SEEDS)
    for run_dir in run_dirs:
        assert sum(out.count(f"(results in {run_dir})") for out in outs) == 1, run_dir.name
    twice, reference = by_run(run_dirs), by_run(alone)
    assert sorted(twice) == sorted(reference)
    for key, result in twice.items():
        assert result["pid"] in {proc.pid for proc in together}
        assert {k: result[k] for k in RUN_KEYS} == {k: reference[key][k] for k in RUN_KEYS}, key
    held = sum(out.count("is being trained by pid") for out in outs)
    trainers = {result["pid"] for result in twice.values()}
    assert held or len(trainers) == 2, "the launches did not overlap: nothing was tested"
    assert not list((tmp_path / "sweep").rglob("lease.json"))


def test_live_holder_names_a_live_lease_and_none_for_free_or_stale(tmp_path):
    run_dir = tmp_path / "run"
    assert lease.live_holder(run_dir) is None
    held = lease.acquire(run_dir)
    holder = lease.live_holder(run_dir)
    assert holder is not None and holder.token == held.token
    assert lease.live_holder(run_dir, timeout_s=-1.0) is None  # its heartbeat counts as stale
    held.release()
    assert lease.live_holder(run_dir) is None

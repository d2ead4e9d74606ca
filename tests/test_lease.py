"""Leases: one worker per run dir. Acquire, release and heldness; one winner among racing
processes; stale leases (no progress within the liveness timeout, dead local pid) taken over; a
heartbeat that survives I/O errors; a release that never removes a new holder's lease; leases
where hard links are missing; the recipe waits for a run a live worker holds and returns its
value; two launches of one sweep dir at once train each run exactly once."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, make_cfg, read_results
from xmodal_ft import checkpoint, engine, heartbeat, lease, lease_files, recipe, run
from xmodal_ft.runspec import RunSpec

HOLD = """
import sys, threading, time
from pathlib import Path
from xmodal_ft import lease
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # racers start together
try:
    lease.acquire(Path(sys.argv[1]))
    print("held", flush=True)
except lease.Held:
    print("lost", flush=True)
closed = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
while not closed.wait(0.05):  # hold until the test closes stdin (or kills this process)
    if sys.argv[3] == "busy":
        lease.progress()  # as a training loop does at every step
"""


def hold(
    run_dir: Path, at: float = 0.0, wait: bool = True, busy: bool = False, liveness: float = 0
) -> subprocess.Popen:
    """A process that takes the lease of `run_dir` (or fails to) at time `at` and keeps running,
    making progress (`busy`, as a training loop) or not; its `outcome` ("held" or "lost") once
    it tried, when waited for. `liveness`: its liveness timeout in seconds (0: the default)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if liveness:
        env[lease.LIVENESS_ENV] = str(liveness)
    mode = "busy" if busy else "idle"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), str(at), mode], env=env, text=True,
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
    with pytest.raises(lease.Held, match=r"pid \d+ on elsewhere \(last progress 10 s ago\)"):
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


def test_the_heartbeat_writes_the_holders_progress_into_its_lease(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.05)
    path = tmp_path / "lease.json"
    with lease.acquire(tmp_path):
        old = time.time() - 100
        for _ in range(20):  # the beat that writes acquire's own progress may come late
            os.utime(path, (old, old))
            time.sleep(0.3)  # beats without progress since: nothing to write
            if path.stat().st_mtime == old:
                break
        assert path.stat().st_mtime == old
        lease.progress()
        deadline = time.time() + 10
        while path.stat().st_mtime == old:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.02)
        assert abs(path.stat().st_mtime - time.time()) < 5
        with pytest.raises(lease.Held):
            lease.acquire(tmp_path, timeout_s=50)


@pytest.fixture
def liveness(monkeypatch) -> float:
    """A short liveness timeout (2 s, heartbeats every 0.2 s) for this process and its children."""
    monkeypatch.setenv(lease.LIVENESS_ENV, "2")
    return 2.0


def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def test_a_holder_that_makes_no_progress_goes_stale_although_it_runs(tmp_path, liveness) -> None:
    """Liveness is progress, not existence: the holder's process and heartbeat thread run, but
    it makes no step (a hung CUDA call, stuck I/O) and is taken over after the timeout."""
    holder = hold(tmp_path, liveness=liveness)
    try:
        assert holder.outcome == "held"  # type: ignore[attr-defined]
        with pytest.raises(lease.Held):
            lease.acquire(tmp_path)
        time.sleep(liveness + 0.5)
        assert lease.live_holder(tmp_path) is None
        lease.acquire(tmp_path).release()
    finally:
        end(holder)


def test_a_holder_that_makes_progress_stays_live_past_the_timeout(tmp_path, liveness) -> None:
    holder = hold(tmp_path, busy=True, liveness=liveness)
    try:
        assert holder.outcome == "held"  # type: ignore[attr-defined]
        time.sleep(2 * liveness)
        assert lease.live_holder(tmp_path) is not None
        with pytest.raises(lease.Held):
            lease.acquire(tmp_path)
    finally:
        end(holder)


def test_a_stopped_holders_lease_goes_stale_although_its_pid_exists(tmp_path, liveness) -> None:
    holder = hold(tmp_path, busy=True, liveness=liveness)
    try:
        assert holder.outcome == "held"  # type: ignore[attr-defined]
        holder.send_signal(signal.SIGSTOP)
        time.sleep(liveness + 0.5)
        with lease.acquire(tmp_path) as taken:
            assert taken.held()
    finally:
        holder.send_signal(signal.SIGCONT)
        end(holder)


def test_the_heartbeat_survives_io_errors_and_reports_them_once(
    tmp_path, monkeypatch, caplog
) -> None:
    """EIO (or ESTALE on NFS) on a touch ends neither the heartbeat nor the lease: it retries
    at every beat and says so once."""
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.05)
    touch, failures = os.utime, []

    def flaky(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        if len(failures) < 3:
            failures.append(1)
            raise OSError(errno.EIO, "Input/output error")
        touch(*args, **kwargs)

    path = tmp_path / "lease.json"
    with caplog.at_level(logging.WARNING, logger="xmodal_ft"), lease.acquire(tmp_path):
        old = time.time() - 100
        monkeypatch.setattr(os, "utime", flaky)  # before the old mtime: no real touch between
        touch(path, (old, old))
        lease.progress()
        wait_until(lambda: path.stat().st_mtime != old, what="heartbeat after EIO")
        monkeypatch.setattr(os, "utime", touch)
    assert len(failures) == 3
    reports = [r for r in caplog.records if "Input/output error" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in caplog.records]


def test_release_never_removes_a_new_holders_lease(tmp_path, monkeypatch) -> None:
    """The lease is taken over (ours was stale) just after release read it as ours: the new
    holder's lease stays (release moves the file aside, checks its token, and puts back one
    that is not its own)."""
    ours = lease.acquire(tmp_path)
    path = tmp_path / "lease.json"
    theirs = {"host": "elsewhere", "pid": 1, "started": 0.0, "token": "theirs"}
    read = lease_files._read

    def read_then_taken_over(where: Path) -> lease.Holder | None:
        holder = read(where)
        if where == path and holder is not None and holder.token == ours.token:
            monkeypatch.setattr(lease_files, "_read", read)
            path.unlink()
            path.write_text(json.dumps(theirs))  # the taker's lease
        return holder

    monkeypatch.setattr(lease_files, "_read", read_then_taken_over)
    ours.release()
    assert json.loads(path.read_text())["token"] == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lease.json"]  # nothing left aside


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS])
def test_leases_work_where_hard_links_are_missing(tmp_path, monkeypatch, code) -> None:
    """Object-store mounts (s3fs, gcsfuse, blobfuse) refuse link(): the lease is created with
    O_CREAT|O_EXCL instead, which stays exclusive."""

    def no_links(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    with lease.acquire(tmp_path) as held:
        record = json.loads((tmp_path / "lease.json").read_text())
        assert record["token"] == held.token and held.held()
        with pytest.raises(lease.Held):
            lease.acquire(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    stale = {"host": "elsewhere", "pid": 1, "started": 0.0, "token": "old"}
    (tmp_path / "lease.json").write_text(json.dumps(stale))
    os.utime(tmp_path / "lease.json", (time.time() - 1000, time.time() - 1000))
    lease.acquire(tmp_path).release()  # a takeover too
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_of_several_takers_of_one_stale_lease_exactly_one_wins(tmp_path) -> None:
    record = {"host": "elsewhere", "pid": 1, "started": 0.0, "token": "stale"}
    (tmp_path / "lease.json").write_text(json.dumps(record))
    os.utime(tmp_path / "lease.json", (time.time() - 1000, time.time() - 1000))
    start = time.time() + 1.0
    racers = [hold(tmp_path, at=start, wait=False, busy=True, liveness=60) for _ in range(4)]
    outcomes = [p.stdout.readline().strip() for p in racers]
    try:
        assert sorted(outcomes) == ["held", "lost", "lost", "lost"]
        assert json.loads((tmp_path / "lease.json").read_text())["token"] != "stale"
    finally:
        for proc in racers:
            end(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no takeover markers left


def test_a_lease_lost_and_released_does_not_stop_the_next_run(
    tmp_path, monkeypatch, caplog
) -> None:
    """A loss noticed after the run ended (its lease replaced before release) belongs to that
    run: the process's next run trains on."""
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.05)
    first = lease.acquire(tmp_path / "a")
    other = {"host": "elsewhere", "pid": 1, "started": 0.0, "token": "other"}
    with caplog.at_level(logging.WARNING, logger="xmodal_ft"):
        (tmp_path / "a" / "lease.json").write_text(json.dumps(other))
        wait_until(lambda: "lost the lease of" in caplog.text, what="loss noticed")
    first.release()
    with lease.acquire(tmp_path / "b"):
        lease.progress()  # raises nothing


def test_a_process_that_lost_a_lease_writes_no_checkpoint_there(tmp_path) -> None:
    """Its lease taken over while it stalled, a process stops writing for that run: saving a
    checkpoint raises `lease.Lost` and leaves the file the new holder sees alone."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mine = lease.acquire(tmp_path)
    (tmp_path / "lease.json").unlink()
    taker = hold(tmp_path)
    try:
        assert taker.outcome == "held"  # type: ignore[attr-defined]
        with pytest.raises(lease.Lost, match=str(tmp_path)):
            checkpoint.save(tmp_path / "checkpoint.pt", checkpoint.LoopState(), model, optimizer)
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        mine.release()
        end(taker)


def specs(root: Path, *overrides: str) -> list[RunSpec]:
    """Two runs of one configuration (two LRs) in dirs of `root`."""
    cfgs = [make_cfg("threads=1", "variant=unfrozen_random", f"lr={lr}", *overrides)
            for lr in (1e-3, 1e-2)]  # fmt: skip
    return [RunSpec(cfg, root / f"lr={cfg.lr}") for cfg in cfgs]


def test_a_run_held_by_a_live_worker_returns_that_workers_value_not_nan(tmp_path, caplog) -> None:
    """Two workers get the same run (a categorical LR, a grid point handed out twice): the
    second waits for the first, which trains it, and returns the value of its results.json
    (nan would fail the sweeper's trial and stall its batch)."""
    overrides = ["threads=1", "variant=unfrozen_random", "max_steps=300", "eval_every=100"]
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    first = subprocess.Popen(
        [sys.executable, "train.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: (run_dir / "lease.json").exists(), 120, "lease of the first worker")
        assert not (run_dir / "results.json").exists()
        with caplog.at_level(logging.INFO, logger="xmodal_ft"):
            (value,) = recipe.train([RunSpec(make_cfg(*overrides), run_dir)])
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
    results = read_results(run_dir)
    assert value == results["val/acc"] and results["pid"] == first.pid
    assert "(results in" not in caplog.text  # not trained here
    assert f"waiting for {run_dir} (trained by pid {first.pid} on " in caplog.text


def test_a_run_whose_holder_stops_progressing_is_taken_over_and_trained(
    tmp_path, caplog, liveness
) -> None:
    """The waiting worker's wait is bounded by the holder's liveness: a holder that makes no
    progress (hung) is taken over once its lease goes stale, and the run trains here."""
    runs = specs(tmp_path)[:1]
    holder = hold(runs[0].run_dir, liveness=liveness)
    try:
        assert holder.outcome == "held"  # type: ignore[attr-defined]
        started = time.time()
        with caplog.at_level(logging.INFO, logger="xmodal_ft"):
            values = recipe.train(runs)
        assert time.time() - started < liveness + 30
    finally:
        end(holder)
    for spec, value in zip(runs, values, strict=True):
        assert read_results(spec.run_dir)["val/acc"] == value
        assert read_results(spec.run_dir)["pid"] == os.getpid()
    assert caplog.text.count("waiting for") == 1
    assert "removed the stale lease of pid" in caplog.text
    assert not list(tmp_path.rglob("lease.json"))


def test_a_worker_that_loses_a_runs_lease_while_training_writes_nothing_more_for_it(
    tmp_path, monkeypatch, caplog, liveness
) -> None:
    """The run's lease is taken over in mid-training (as when its worker stalled past the
    timeout): from then on this worker writes neither checkpoints nor results for it (it used
    to warn and keep writing). When the taker goes stale in turn, this worker takes the run back
    and resumes it from its own last checkpoint, to the results of an uninterrupted run."""
    cfg = make_cfg("threads=1", "variant=unfrozen_random", "max_steps=12", "eval_every=2")
    run(cfg, tmp_path / "whole")
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(lease.EVENTS_ENV, str(events))
    run_dir, save, taker = tmp_path / "run", checkpoint.save, []

    def save_then_taken_over(path, state, *args) -> None:  # noqa: ANN001
        save(path, state, *args)
        if state.step == 4 and not taker:
            (run_dir / "lease.json").unlink()  # as a takeover of a stale lease does
            taker.append(hold(run_dir, liveness=liveness))

    monkeypatch.setattr(checkpoint, "save", save_then_taken_over)
    try:
        with caplog.at_level(logging.INFO, logger="xmodal_ft"):
            value = run(cfg, run_dir)
    finally:
        for proc in taker:
            end(proc)
    assert "lost the lease of" in caplog.text and "resumed from" in caplog.text
    whole, resumed = read_results(tmp_path / "whole"), read_results(run_dir)
    for key in ("config_hash", "val/acc", "test/acc", "best_step", "steps", "history"):
        assert resumed[key] == whole[key], key
    assert value == whole["val/acc"]
    assert (run_dir / "metrics.jsonl").read_text() == (
        tmp_path / "whole" / "metrics.jsonl"
    ).read_text()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    (foreign,) = [e for e in lines if e["kind"] == "acquired" and e["pid"] == taker[0].pid]
    back = next(e for e in lines if e["kind"] == "acquired" and e["t"] > foreign["t"])
    assert back["pid"] == os.getpid()
    during = [e for e in lines if foreign["t"] < e["t"] < back["t"] and e["kind"] == "write"]
    assert during == []  # nothing written while the other worker held the run
    assert [e["what"] for e in lines if e["kind"] == "write"][-1] == "results"


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
    held = sum(out.count("waiting for") for out in outs)
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

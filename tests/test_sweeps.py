"""Real `train.py -m` multiruns: grid + report, kill and relaunch, Optuna, parallel launcher."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xmodal_ft import report

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny_gpt2",
    "variant=unfrozen_random",
    "task=digits",
    "task.n_train=64",
    "max_steps=4",
    "eval_every=2",
    "progress=false",
    "cache_dir=null",
]


def sweep(sweep_dir: Path, *overrides: str, wait: bool = True) -> subprocess.Popen:
    """Start `python train.py -m <tiny> <overrides> hydra.sweep.dir=<sweep_dir>`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "train.py", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        proc.output = out  # type: ignore[attr-defined]
    return proc


def results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]


def test_grid_multirun_then_report_picks_best_mean_val_lr(tmp_path) -> None:
    sweep(tmp_path, "lr=1e-4,1e-3,1e-2", "seed=0,1")
    runs = results(tmp_path)
    assert sorted((r["config"]["lr"], r["config"]["seed"]) for r in runs) == [
        (lr, s) for lr in (1e-4, 1e-3, 1e-2) for s in (0, 1)
    ]
    report.main([str(tmp_path)])
    mean_val = {
        lr: statistics.fmean(r["val/acc"] for r in runs if r["config"]["lr"] == lr)
        for lr in (1e-4, 1e-3, 1e-2)
    }
    best_lr = max(mean_val, key=mean_val.get)
    [row] = (tmp_path / "report" / "results.csv").read_text().splitlines()[1:]
    fields = dict(zip((tmp_path / "report" / "results.csv").read_text().split()[0].split(","),
                      row.split(","), strict=True))  # fmt: skip
    assert float(fields["lr"]) == best_lr
    tests = [r["test/acc"] for r in runs if r["config"]["lr"] == best_lr]
    assert float(fields["test_mean"]) == pytest.approx(statistics.fmean(tests), abs=1e-12)
    sem = statistics.stdev(tests) / math.sqrt(2)
    assert float(fields["test_sem"]) == pytest.approx(sem, abs=1e-12)
    assert float(fields["val_mean"]) == pytest.approx(mean_val[best_lr], abs=1e-12)
    assert (tmp_path / "report" / "lr_digits_tiny_gpt2.png").stat().st_size > 0
    assert "unfrozen_random" in (tmp_path / "report" / "report.md").read_text()


def test_killed_sweep_relaunch_skips_finished_and_resumes_unfinished(tmp_path) -> None:
    args = ["lr=1e-3", "seed=0,1", "max_steps=300", "eval_every=20", "checkpoint_every=20"]
    reference = tmp_path / "reference"
    sweep(reference, *args)
    killed = tmp_path / "killed"
    proc = sweep(killed, *args, wait=False)
    deadline = time.time() + 240
    while not (len(results(killed)) == 1 and list(killed.rglob("checkpoint-*.pt"))):
        assert time.time() < deadline and proc.poll() is None, "sweep ended before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert len(results(killed)) == 1
    relaunch = sweep(killed, *args)
    assert "complete results of this config: skipped" in relaunch.output
    assert "resumed from" in relaunch.output
    keys = ["val/acc", "test/acc", "best_step", "history", "config_hash"]
    got = {r["config"]["seed"]: [r[k] for k in keys] for r in results(killed)}
    want = {r["config"]["seed"]: [r[k] for k in keys] for r in results(reference)}
    assert got == want
    assert not list(killed.rglob("checkpoint-*.pt"))


@pytest.mark.slow
def test_optuna_sweep_runs_trials_as_the_mean_over_seeds(tmp_path) -> None:
    sweep(tmp_path, "sweep=optuna", "seeds=[0,1]", "hydra.sweeper.n_trials=4")
    runs = results(tmp_path)
    assert len(runs) == 8
    trials = {r["config"]["lr"] for r in runs}
    assert len(trials) == 4 and all(1e-6 <= lr <= 1e-2 for lr in trials)
    optimization = (tmp_path / "optimization_results.yaml").read_text()
    best_lr = max(trials, key=lambda lr: statistics.fmean(
        r["val/acc"] for r in runs if r["config"]["lr"] == lr))  # fmt: skip
    assert repr(best_lr)[:8] in optimization


@pytest.mark.slow
def test_parallel_launcher_runs_two_jobs_at_once(tmp_path) -> None:
    sweep(tmp_path, "hydra/launcher=parallel", "lr=1e-3,1e-2")
    runs = results(tmp_path)
    assert len(runs) == 2
    assert len({r["pid"] for r in runs}) == 2

"""Real `train.py -m` multiruns: grid + report, kill and relaunch, Optuna, parallel launcher."""

from __future__ import annotations

import csv
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
import yaml

from conftest import ROOT, make_cfg
from xmodal_ft import report, run

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


def check_report_of_grid(sweep_dir: Path, lrs: tuple[float, ...], seeds: tuple[int, ...]) -> None:
    """The report over a grid's results.json files picks the LR of the best mean val metric."""
    runs = results(sweep_dir)
    assert sorted((r["config"]["lr"], r["config"]["seed"]) for r in runs) == [
        (lr, s) for lr in lrs for s in seeds
    ]
    report.main([str(sweep_dir)])
    mean_val = {
        lr: statistics.fmean(r["val/acc"] for r in runs if r["config"]["lr"] == lr) for lr in lrs
    }
    best_lr = max(mean_val, key=mean_val.get)
    [fields] = csv.DictReader((sweep_dir / "report" / "results.csv").open())
    assert float(fields["lr"]) == best_lr
    tests = [r["test/acc"] for r in runs if r["config"]["lr"] == best_lr]
    assert float(fields["test_mean"]) == pytest.approx(statistics.fmean(tests), abs=1e-12)
    sem = statistics.stdev(tests) / math.sqrt(len(seeds))
    assert float(fields["test_sem"]) == pytest.approx(sem, abs=1e-12)
    assert float(fields["val_mean"]) == pytest.approx(mean_val[best_lr], abs=1e-12)
    assert (sweep_dir / "report" / "lr_digits_tiny_gpt2.png").stat().st_size > 0


def test_grid_of_runs_then_report_picks_best_mean_val_lr(tmp_path) -> None:
    lrs, seeds = (1e-4, 1e-2), (0, 1)
    for lr in lrs:
        for seed in seeds:
            cfg = make_cfg(*TINY, f"lr={lr}", f"seed={seed}")
            run(cfg, run_dir=tmp_path / f"lr={lr},seed={seed}")
    check_report_of_grid(tmp_path, lrs, seeds)


@pytest.mark.slow
def test_grid_multirun_then_report_picks_best_mean_val_lr(tmp_path) -> None:
    sweep(tmp_path, "lr=1e-4,1e-3,1e-2", "seed=0,1")
    check_report_of_grid(tmp_path, (1e-4, 1e-3, 1e-2), (0, 1))


def test_seeds_list_trains_each_seed_returns_the_mean_and_reruns_skip(tmp_path) -> None:
    cfg = make_cfg("variant=unfrozen_random", "seeds=[0,1]")
    mean = run(cfg, run_dir=tmp_path)
    per_seed = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [r["config"]["seed"] for r in per_seed] == [0, 1]
    assert all(r["config"]["seeds"] is None for r in per_seed)
    assert mean == pytest.approx(statistics.fmean(r["val/acc"] for r in per_seed), abs=1e-12)
    stamps = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*"))
    assert run(cfg, run_dir=tmp_path) == mean  # complete: skipped, nothing rewritten
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*")) == stamps


@pytest.mark.slow
def test_killed_sweep_relaunch_skips_finished_and_resumes_unfinished(tmp_path) -> None:
    args = ["lr=1e-3", "max_steps=40", "eval_every=4", "checkpoint_every=4"]
    proc = sweep(tmp_path, *args, "seed=0,1", wait=False)
    deadline = time.time() + 240
    while not (len(results(tmp_path)) == 1 and list(tmp_path.rglob("checkpoint-*.pt"))):
        assert time.time() < deadline and proc.poll() is None, "sweep ended before the kill"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the second job dies between two checkpoints
    proc.communicate()
    [finished] = results(tmp_path)
    relaunch = sweep(tmp_path, *args, "seed=0,1")
    assert "complete results of this config: skipped" in relaunch.output
    assert "resumed from" in relaunch.output
    assert not list(tmp_path.rglob("checkpoint-*.pt"))
    assert finished in results(tmp_path)  # untouched by the relaunch
    [resumed] = [r for r in results(tmp_path) if r["config"]["seed"] != finished["config"]["seed"]]
    seed = resumed["config"]["seed"]
    run(make_cfg(*TINY, *args, f"seed={seed}"), run_dir=tmp_path / "reference")
    reference = json.loads((tmp_path / "reference" / "results.json").read_text())
    for key in ["config_hash", "val/acc", "test/acc", "best_step", "steps", "history"]:
        assert resumed[key] == reference[key], key


@pytest.mark.slow
def test_optuna_sweep_runs_trials_as_the_mean_over_seeds(tmp_path) -> None:
    sweep(tmp_path, "sweep=optuna", "seeds=[0,1]", "hydra.sweeper.n_trials=4")
    runs = results(tmp_path)
    assert len(runs) == 8
    trials = {r["config"]["lr"] for r in runs}
    assert len(trials) == 4 and all(1e-6 <= lr <= 1e-2 for lr in trials)
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    mean_val = {
        lr: statistics.fmean(r["val/acc"] for r in runs if r["config"]["lr"] == lr) for lr in trials
    }
    assert best["best_value"] == pytest.approx(max(mean_val.values()), abs=1e-12)
    assert mean_val[best["best_params"]["lr"]] == pytest.approx(best["best_value"], abs=1e-12)


@pytest.mark.slow
def test_parallel_launcher_runs_two_jobs_at_once(tmp_path) -> None:
    sweep(tmp_path, "hydra/launcher=parallel", "lr=1e-3,1e-2")
    runs = results(tmp_path)
    assert len(runs) == 2
    assert len({r["pid"] for r in runs}) == 2

"""Reliability: what a killed, corrupted or secret-holding sweep leaves behind.

- A multirun killed with SIGKILL at a random (seeded) step and relaunched into the same sweep dir
  gives the same report tables as an uninterrupted one and loses at most one checkpoint interval
  (default and lockstep launchers; slow: `train.py -m` subprocesses).
- A truncated or corrupt results.json is listed by the report and trained again by a relaunch.
- No secret from the environment (WANDB_API_KEY, HF_TOKEN) lands in a run's files or output.
The bad-input matrix (one-line errors) is tests/test_errors.py; a corrupt checkpoint,
tests/test_checkpoint.py.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT, make_cfg
from test_errors import ENTRYPOINT
from xmodal_ft import errors, report, run

EVERY = 8  # checkpoint_every = eval_every
STEPS = 32
SWEEP = ["model=tiny_gpt2", "variant=unfrozen_random", "task=digits", "task.n_train=64",
         f"max_steps={STEPS}", f"eval_every={EVERY}", f"checkpoint_every={EVERY}", "log_every=1",
         "threads=1", "progress=false", "cache_dir=null", "lr=1e-3,1e-2", "seed=0,1"]  # fmt: skip
TABLES = ("report.md", "results.csv", "results_per_lr.csv", "test_table.csv")
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def start(sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    """`python train.py -m <SWEEP> <overrides> hydra.sweep.dir=<sweep_dir>` in its own session."""
    cmd = [sys.executable, "train.py", "-m", *SWEEP, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def train_steps(run_dir: Path) -> list[int]:
    """The steps whose train loss a run logged to metrics.jsonl (as far as it got)."""
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:  # the line being written when the process was killed
            continue
        if "train/loss" in record:
            steps.append(record["step"])
    return steps


def tables(sweep_dir: Path) -> dict[str, str]:
    """The report's tables over a sweep (results_per_lr.csv where the report writes it)."""
    report.main([str(sweep_dir)])
    out = sweep_dir / "report"
    return {name: (out / name).read_text() for name in TABLES if (out / name).exists()}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "lockstep"])
def test_a_sweep_killed_at_a_random_step_and_relaunched_reports_as_an_uninterrupted_one(
    tmp_path, launcher
) -> None:
    extra = ["hydra/launcher=lockstep"] if launcher == "lockstep" else []
    runs = 4
    # the kill comes once the runs logged this many train steps in all (basic: one job after
    # another; lockstep: all four at once, so each at about a quarter of it)
    kill_at = random.Random(f"kill-{launcher}").randrange(1, runs * STEPS - 2)
    killed = start(tmp_path / "killed", *extra)
    reference = start(tmp_path / "reference", *extra)  # meanwhile, uninterrupted
    deadline = time.time() + 480
    while sum(len(train_steps(d)) for d in (tmp_path / "killed").glob("*/")) < kill_at:
        assert killed.poll() is None, "the sweep ended before the kill: " + killed.stdout.read()
        assert time.time() < deadline, "no progress to kill at"
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    run_dirs = sorted(p.parent for p in (tmp_path / "killed").glob("*/.hydra"))
    finished = {
        d: (d / "results.json").read_bytes() for d in run_dirs if (d / "results.json").exists()
    }  # noqa: E501
    unfinished = [d for d in run_dirs if d not in finished and train_steps(d)]
    assert unfinished, f"the kill at step {kill_at} left no run half-trained"
    reached = {d: max(train_steps(d)) for d in unfinished}
    out = finish(start(tmp_path / "killed", *extra))
    assert out.count("complete results of this config: skipped") == len(finished)
    assert {d: (d / "results.json").read_bytes() for d in finished} == finished  # untouched
    resumed = {Path(path).parent: int(step) for path, step in RESUMED.findall(out)}
    for run_dir, step in reached.items():
        lost = step - resumed.get(run_dir, 0)
        assert 0 <= lost <= EVERY, (run_dir.name, step, resumed)
    assert not list((tmp_path / "killed").rglob("checkpoint-*.pt"))
    finish(reference)
    assert len(list((tmp_path / "killed").glob("*/results.json"))) == runs
    assert tables(tmp_path / "killed") == tables(tmp_path / "reference")
    for run_dir in unfinished:  # each step logged once, as uninterrupted
        reference_dir = tmp_path / "reference" / run_dir.name
        assert (run_dir / "metrics.jsonl").read_text() == (
            reference_dir / "metrics.jsonl"
        ).read_text()


def grid(sweep_dir: Path) -> list[Path]:
    """Two LRs x two seeds, trained in this process as train.py's jobs run them."""
    dirs = []
    for lr in (1e-3, 1e-2):
        for seed in (0, 1):
            cfg = make_cfg("variant=unfrozen_random", "max_steps=4", "eval_every=2", "threads=1",
                           f"lr={lr}", f"seed={seed}")  # fmt: skip
            dirs.append(sweep_dir / f"lr={lr},seed={seed}")
            run(cfg, run_dir=dirs[-1])
    return dirs


def test_a_broken_results_file_is_reported_and_its_run_trained_again(tmp_path) -> None:
    dirs = grid(tmp_path)
    before = tables(tmp_path)
    truncated, corrupt = dirs[1] / "results.json", dirs[2] / "results.json"
    kept = {d / "results.json": (d / "results.json").stat().st_mtime_ns for d in (dirs[0], dirs[3])}
    truncated.write_bytes(truncated.read_bytes()[:200])  # a disk that filled up, a copy cut short
    corrupt.write_bytes(b"\x00\xff" * 64)
    broken = tables(tmp_path)["report.md"]
    assert "## Skipped files" in broken
    for path in (truncated, corrupt):
        assert f"- {path}: " in broken
    assert grid(tmp_path) == dirs  # the relaunch: two runs train again, two are skipped
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert json.loads(truncated.read_text())["status"] == "complete"
    assert tables(tmp_path) == before


SECRETS = {"WANDB_API_KEY": "f" * 8 + "a1b2c3d4" * 4, "HF_TOKEN": "hf_" + "Zq9" * 11,
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9secret"}  # fmt: skip


def test_no_secret_from_the_environment_lands_in_a_runs_files_or_output(
    tmp_path, monkeypatch, capfd
) -> None:
    """A W&B multirun (offline) with fake secrets in the environment: results.json, metrics,
    train.log, the .hydra and multirun.yaml config dumps and W&B's offline run files hold none."""
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    argv = ["train.py", "-m", "model=tiny_gpt2", "variant=unfrozen_random", "task.n_train=64",
            "max_steps=4", "eval_every=2", "progress=false", "cache_dir=null", "logger=wandb",
            f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    try:
        errors.main(ENTRYPOINT.main)
    finally:
        GlobalHydra.instance().clear()
        logging.getLogger().handlers.clear()
    out, err = capfd.readouterr()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"results.json", "metrics.jsonl", "train.log", "config.yaml", "hydra.yaml",
            "multirun.yaml"} <= names and any(n.endswith(".wandb") for n in names)  # fmt: skip
    for secret in SECRETS.values():
        assert secret not in out + err
        leaks = [p for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, leaks

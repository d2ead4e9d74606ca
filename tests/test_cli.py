"""The entrypoint as users type it: `python train.py ...` in a subprocess (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA

MNIST = SHARED_DATA / "mnist"


def train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", "progress=false", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_default_run_is_offline_and_writes_results(tmp_path: Path) -> None:
    proc = train(tmp_path, "max_steps=400", "eval_every=200", "cache_dir=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["choices"]["model"] == "minilm" and results["choices"]["task"] == "digits"
    assert results["test/acc"] > 0.5  # chance is 0.1
    assert "test acc" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_bad_input_fails_with_one_clear_line(tmp_path: Path) -> None:
    """As users type it (tests/test_errors.py drives the whole matrix in-process)."""
    for args, line in [
        (["lr=0"], "error: lr=0.0 must be > 0 (e.g. lr=1e-4)"),
        (["lr=abc"], "error: Error merging override lr=abc: Value 'abc' of type 'str' could not "
                     "be converted to Float"),
        (["model=tiny_gpt2", "task=listops"], "error: model tiny_gpt2 has no pretrained weights "
         "(model.path=null): use a random-init variant (variant=unfrozen_random or "
         "frozen_random), or set model.path=<hub id|dir>"),
    ]:  # fmt: skip
        proc = train(tmp_path, *args)
        assert (proc.returncode, proc.stderr.splitlines()) == (1, [line])
    proc = train(tmp_path, "task=mnist", f"task.data_dir={tmp_path / 'absent'}")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"error: task.data_dir {tmp_path / 'absent'} does not exist")
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_cfg_job_prints_the_full_config(tmp_path: Path) -> None:
    proc = train(tmp_path, "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "_target_: xmodal_ft.tasks.images.digits" in proc.stdout
    assert "input_gain: 1.41" in proc.stdout and "debug: false" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="needs the MNIST IDX files in ../shared/data/mnist")
def test_fpt_minilm_learns_real_mnist(tmp_path: Path) -> None:
    proc = train(
        tmp_path,
        "task=mnist",
        f"task.data_dir={MNIST}",
        "task.n_test=2000",
        "max_steps=300",
        "eval_every=300",
        "batch_size=16",
        "model.dropout=0",  # the checkpoint's 0.1 slows FPT's early learning (README)
        "cache_dir=null",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["test/acc"] > 0.7


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="needs the MNIST IDX files in ../shared/data/mnist")
def test_default_validation_costs_at_most_15_percent_of_an_mnist_minilm_run(tmp_path: Path) -> None:
    """Shipped defaults (eval_every 100, val_subset 256, batch 8); fewer steps and test images
    than a real run, which only raises validation's share (a pass at step 0 and at the end)."""
    proc = train(tmp_path, "task=mnist", f"task.data_dir={MNIST}", "task.n_test=500",
                 "max_steps=300", "cache_dir=null")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["val_seconds"] <= 0.15 * results["wall_seconds"]

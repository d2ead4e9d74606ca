"""Pruned vs unpruned lockstep sweeps: the 27-run tiny_gpt2 grid (9 LRs × 3 seeds, as
benchmarks/lockstep.py's tiny_gpt2 case) with `pruner=null`, `halving` and `median`.

Each sweep is one `train.py -m ... hydra/launcher=lockstep` command in a fresh process, timed
whole, with validation every eighth of the budget (the passes the pruners judge on). Run-steps
computed: each run's steps (a pruned run's stop at its pruning step), summed. The chosen LR and
its test accuracy are the report's (`xmodal_ft.report.aggregate`: pruned LRs left out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.lockstep import MNIST_DIR
from benchmarks.sweep import LRS, ROOT, SEEDS

PRUNERS = (None, "halving", "median")


def pruned_vs_unpruned(quick: bool = False, threads: int = 1) -> list[dict[str, Any]]:
    """One row per pruner (None: the full grid): run-steps computed, wall seconds, the chosen LR
    and its test accuracy (mean over seeds), runs pruned."""
    steps = 100 if quick else 400
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in PRUNERS:
            rows.append(_sweep(pruner, steps, threads, Path(tmp) / str(pruner)))
    full = rows[0]["run_steps"]
    for row in rows:
        row["run_steps_saved"] = 1 - row["run_steps"] / full
    return rows


def _sweep(pruner: str | None, steps: int, threads: int, sweep_dir: Path) -> dict[str, Any]:
    from xmodal_ft import report

    task = (
        ["task=mnist", f"task.data_dir={MNIST_DIR}", "task.n_train=5000", "task.n_test=256"]
        if MNIST_DIR.exists()
        else ["task=digits"]
    )
    cmd = [
        sys.executable, "train.py", "-m", f"lr={','.join(LRS)}", f"seed={SEEDS}",
        "model=tiny_gpt2", "variant=unfrozen_random", *task, f"max_steps={steps}",
        f"eval_every={steps // 8}", f"threads={threads}", "progress=false",
        f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=lockstep",
        *([f"pruner={pruner}"] if pruner else []),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pruner={pruner} failed:\n{proc.stderr[-3000:]}")
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    [chosen] = report.aggregate(report.load_runs([sweep_dir])[0])
    return {
        "pruner": pruner or "none",
        "command": " ".join(cmd[1:]),
        "runs": len(results),
        "runs_pruned": sum(bool(r.get("pruned")) for r in results),
        "run_steps": sum(r["steps"] for r in results),
        "wall_seconds": wall,
        "chosen_lr": chosen.best.lr,
        "chosen_test_acc": chosen.best.test[0],
        "chosen_test_sem": chosen.best.test[1],
    }

"""Sweep overhead: a 9-LR x 3-seed Hydra multirun in one process, wall time vs training time."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cases import ROOT

LRS = [f"{10 ** (-6 + 0.5 * i):.3g}" for i in range(9)]  # 1e-6 .. 1e-2, log-spaced
SEEDS = "0,1,2"


def sweep_overhead(
    max_steps: int, model: str = "tiny_gpt2", variant: str = "frozen_random", task: str = "digits"
) -> dict[str, Any]:
    """Run `train.py -m lr=<9> seed=0,1,2` (basic launcher: jobs in one process) and time it.

    A job's overhead is the time between the previous job's results.json and its own, minus its
    training time (`train_seconds`): Hydra's job setup, task and model building, recording.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "train.py",  # in ROOT, the working directory
            "-m",
            f"lr={','.join(LRS)}",
            f"seed={SEEDS}",
            f"model={model}",
            f"variant={variant}",
            f"task={task}",
            f"max_steps={max_steps}",
            f"eval_every={max_steps}",
            "progress=false",
            "cache_dir=null",
            f"hydra.sweep.dir={tmp}",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
        start = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
        wall = time.time() - start
        runs = sorted(
            (path.stat().st_mtime, json.loads(path.read_text()))
            for path in Path(tmp).glob("*/results.json")
        )
    ends = [start] + [end for end, _ in runs]
    overheads = [
        b - a - r["train_seconds"] for a, b, (_, r) in zip(ends[:-1], ends[1:], runs, strict=True)
    ]
    train = sum(r["train_seconds"] for _, r in runs)
    return {
        "command": " ".join(cmd[1:-1]),
        "runs": len(runs),
        "wall_seconds": wall,
        "train_seconds": train,
        "first_run_overhead_s": overheads[0],
        "later_run_overhead_s": statistics.median(overheads[1:]),
        "later_run_overhead_max_s": max(overheads[1:]),
        "in_run_overhead_s": statistics.median(
            r["wall_seconds"] - r["train_seconds"] for _, r in runs[1:]
        ),
    }

"""Lockstep sweeps: an LR x seed grid as the default sequential multirun vs hydra/launcher=lockstep.

Both launchers run the same `train.py -m lr=<grid> seed=0,1,2 ...` command in a fresh process on
MNIST's 49-token shape (4x4 patches; digits' 16 tokens when the MNIST files are missing), with
validation only at the start and the end. A random-init GPT-2 small saved to a temporary
directory stands in for the hub checkpoint, so that its FPT runs share one frozen backbone.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.sweep import LRS, ROOT

log = logging.getLogger("benchmarks")
MNIST_DIR = Path(os.environ.get("XMODAL_FT_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
GPT2_4X256 = ["model=tiny_gpt2", "model.arch.n_layer=4", "model.arch.n_head=4",
              "model.arch.n_embd=256"]  # fmt: skip
# Runs a command and prints its peak RSS (the largest of its process tree's waited children).
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
)


@dataclass(frozen=True)
class SweepCase:
    name: str
    overrides: tuple[str, ...]
    steps: int
    lrs: int = len(LRS)  # grid size: the first `lrs` of the 9 log-spaced LRs


def cases(quick: bool, gpt2_dir: Path) -> list[SweepCase]:
    scale = 1 if quick else 4
    return [
        SweepCase(
            "tiny_gpt2 unfrozen", ("model=tiny_gpt2", "variant=unfrozen_random"), 100 * scale
        ),
        SweepCase(
            "gpt2-4x256 (3.2M) unfrozen", (*GPT2_4X256, "variant=unfrozen_random"), 40 * scale
        ),
        SweepCase(
            "minilm fpt", ("model=minilm", "variant=fpt"), 20 * scale, lrs=3 if quick else len(LRS)
        ),  # fmt: skip
        SweepCase(
            "gpt2 small fpt",
            ("model=gpt2", f"model.path={gpt2_dir}", "variant=fpt"),
            3 * scale,
            lrs=3 if quick else len(LRS),
        ),  # fmt: skip
    ]


def lockstep_sweeps(quick: bool, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Each case's grid (or those named in `only`) with both launchers, side by side: wall time,
    rates, peak memory."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gpt2_dir = Path(tmp) / "gpt2"
        names = [case.name for case in cases(quick, gpt2_dir)]
        if only is not None and not only <= set(names):
            raise ValueError(f"unknown lockstep cases {sorted(only - set(names))}; cases: {names}")
        chosen = [
            (i, c) for i, c in enumerate(cases(quick, gpt2_dir)) if not only or c.name in only
        ]
        if any(f"model.path={gpt2_dir}" in case.overrides for _, case in chosen):
            _save_gpt2_small(gpt2_dir)
        for i, case in chosen:
            runs = {}
            for launcher in ("basic", "lockstep"):
                runs[launcher] = _sweep(case, launcher, Path(tmp) / f"case{i}-{launcher}")
                log.info(
                    "%s, %s launcher: %.0f s", case.name, launcher, runs[launcher]["wall_seconds"]
                )
            rows.append(_row(case, runs["basic"], runs["lockstep"]))
    return rows


def _sweep(
    case: SweepCase, launcher: str, sweep_dir: Path, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    task = (
        ["task=mnist", f"task.data_dir={MNIST_DIR}", "task.n_train=5000", "task.n_test=256"]
        if MNIST_DIR.exists()
        else ["task=digits"]
    )
    cmd = [
        sys.executable, "train.py", "-m",  # in ROOT, the working directory
        f"lr={','.join(LRS[-case.lrs:])}", "seed=0,1,2", *case.overrides, *task,
        f"max_steps={case.steps}", f"eval_every={case.steps}", "progress=false",
        f"hydra.sweep.dir={sweep_dir}", f"hydra/launcher={launcher}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *cmd], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{case.name} ({launcher}) failed:\n{proc.stderr[-3000:]}")
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    return {
        "command": " ".join(cmd[2:]),
        "wall_seconds": wall,
        "peak_memory_bytes": int(proc.stdout.strip().splitlines()[-1]),
        "val": {f"{r['config']['lr']},{r['config']['seed']}": r["val/acc"] for r in results},
        "val_seconds": sum(r["val_seconds"] for r in results),
        "train_seconds": sum(r["train_seconds"] for r in results),
        "test": {f"{r['config']['lr']},{r['config']['seed']}": r["test/acc"] for r in results},
        "steps": {f"{r['config']['lr']},{r['config']['seed']}": r["steps"] for r in results},
        "pids": len({r["pid"] for r in results}),
        "runs": len(results),
    }


def _row(case: SweepCase, basic: dict[str, Any], lockstep: dict[str, Any]) -> dict[str, Any]:
    runs = basic["runs"]
    samples = runs * case.steps * 8  # batch 8
    delta = max(abs(basic["val"][k] - lockstep["val"][k]) for k in basic["val"])
    return {
        "case": case.name,
        "runs": runs,
        "steps": case.steps,
        "basic": basic,
        "lockstep": lockstep,
        "runs_per_hour": {
            k: 3600 * runs / v["wall_seconds"]
            for k, v in (("basic", basic), ("lockstep", lockstep))
        },  # fmt: skip
        "samples_per_s": {
            k: samples / v["wall_seconds"] for k, v in (("basic", basic), ("lockstep", lockstep))
        },  # fmt: skip
        "speedup": basic["wall_seconds"] / lockstep["wall_seconds"],
        "max_val_delta": delta,
    }


def _save_gpt2_small(directory: Path) -> Path:
    """GPT-2 small's architecture with random weights, saved as if it were the hub checkpoint."""
    from transformers import AutoConfig, AutoModel

    AutoModel.from_config(AutoConfig.for_model("gpt2")).save_pretrained(directory)
    return directory

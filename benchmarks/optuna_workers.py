"""Optuna workers: trials per hour of 2 workers (`train.py -m sweep=optuna`) filling one study on
one storage (a SQLite file, a journal file), and whether the study ends with `n_trials` complete.

The driver uses the standard library only, so it can time another checkout's code (an older
sweeper) with that checkout's Python: `--repo DIR --python DIR/.venv/bin/python`. Each worker is
the command a user types; wall time is from the workers' start to the last one's exit; the busy
rate counts complete trials over the span from the first trial's start to the last one's end (the
study's own timestamps), leaving out start-up and the final wait.

    python -m benchmarks.optuna_workers --storage sqlite journal
    python -m benchmarks.optuna_workers --repo /old/checkout --python /old/checkout/.venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# What one trial trains: tiny_gpt2 on digits, one seed, 50 steps (a few seconds on 2 cores).
TRIAL = ["task=digits", "model=tiny_gpt2", "variant=unfrozen_random", "max_steps=50",
         "eval_every=25", "seeds=[0]", "progress=false"]  # fmt: skip
# Reads the study with the workers' Python: trial states and times (Optuna 2.10 and >= 4).
READER = """
import json, sys, optuna
url = sys.argv[1]
if "://" not in url:  # a journal file
    from optuna.storages.journal import JournalFileBackend
    url = optuna.storages.JournalStorage(JournalFileBackend(url))
study = optuna.load_study(study_name="xmodal_ft", storage=url)
print(json.dumps([
    {"state": t.state.name, "start": t.datetime_start.timestamp() if t.datetime_start else None,
     "end": t.datetime_complete.timestamp() if t.datetime_complete else None}
    for t in study.get_trials(deepcopy=False)
]))
"""


def optuna_workers(
    quick: bool,
    storages: tuple[str, ...] = ("sqlite", "journal"),
    repo: Path = ROOT,
    python: str = sys.executable,
    workers: int = 2,
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One row per storage: wall seconds, complete trials, trials/h (wall and busy)."""
    n_trials = 12 if quick else 24
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in storages:
            where = Path(tmp) / kind
            where.mkdir()
            rows.append(_measure(kind, where, n_trials, repo, python, workers, extra))
    return rows


def _measure(
    kind: str, where: Path, n_trials: int, repo: Path, python: str, workers: int,
    extra: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    url = f"sqlite:///{where}/study.db" if kind == "sqlite" else f"{where}/study.log"
    cmd = [python, "train.py", "-m", "sweep=optuna", *TRIAL, f"hydra.sweeper.n_trials={n_trials}",
           f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={where}/sweep", *extra]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled"}  # fmt: skip
    start = time.time()
    procs = [
        subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(workers)
    ]
    outputs = [proc.communicate()[0].decode() for proc in procs]
    wall = time.time() - start
    trials = json.loads(
        subprocess.run(
            [python, "-c", READER, url], cwd=repo, env=env, check=True, capture_output=True
        ).stdout
    )
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    busy = max(t["end"] for t in complete) - min(t["start"] for t in trials if t["start"])
    return {
        "storage": kind,
        "repo": str(repo),
        "workers": workers,
        "n_trials": n_trials,
        "exit_codes": [proc.returncode for proc in procs],
        "tracebacks": sum("Traceback" in out for out in outputs),
        "trials": len(trials),
        "complete": len(complete),
        "wall_seconds": wall,
        "busy_seconds": busy,
        "trials_per_hour": 3600 * len(complete) / wall,
        "busy_trials_per_hour": 3600 * len(complete) / busy,
        "command": " ".join(cmd[1:]),
    }


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Optuna workers on one storage", "",
        "| storage | checkout | workers | complete / n_trials | wall s | trials/h | busy trials/h "
        "| exit codes |", "|---|---|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['storage']} | {r['repo']} | {r['workers']} | {r['complete']} / {r['n_trials']}"
            f" | {r['wall_seconds']:.0f} | {r['trials_per_hour']:.0f} "
            f"| {r['busy_trials_per_hour']:.0f} | {r['exit_codes']} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", nargs="+", default=["sqlite", "journal"],
                        choices=["sqlite", "journal"])  # fmt: skip
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose train.py runs")
    parser.add_argument("--python", default=sys.executable, help="its Python")
    parser.add_argument("--quick", action="store_true", help="12 trials instead of 24")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("extra", nargs="*", help="more overrides for every worker")
    args = parser.parse_args(argv)
    rows = optuna_workers(
        args.quick, tuple(args.storage), args.repo.resolve(), args.python, extra=tuple(args.extra)
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n".join(markdown(rows)))


if __name__ == "__main__":
    main()

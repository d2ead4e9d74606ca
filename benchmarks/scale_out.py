"""Scale-out: one 27-run grid (9 LRs x 3 seeds) as the default sequential multirun, as one
lockstep group in one process (every core as torch threads), and as two lockstep groups on two
one-core "devices" (`hydra.launcher.devices=2`: two pinned worker processes). Wall time of the
whole `train.py -m` command; the runs' validation accuracies agree across the three. Then the
tiny_gpt2 grid pruned vs unpruned (`benchmarks.pruning`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.lockstep import _sweep, cases
from benchmarks.pruning import pruned_vs_unpruned

log = logging.getLogger("benchmarks")
LAYOUTS = {  # name: (launcher, extra overrides)
    "sequential": ("basic", ()),
    "1 group, 2 threads": ("lockstep", ()),
    "2 groups on 2 one-core devices": ("lockstep", ("hydra.launcher.devices=2",)),
}
CASES = ("tiny_gpt2 unfrozen", "gpt2-4x256 (3.2M) unfrozen")


def scale_out(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """Each case under each layout (wall seconds, runs/h, speed-up, max val delta), and the
    pruned vs unpruned grid."""
    return {"layouts": _layouts(quick), "pruning": pruned_vs_unpruned(quick)}


def _layouts(quick: bool) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chosen = [c for c in cases(quick, Path(tmp)) if c.name in CASES]
        for c, case in enumerate(chosen):
            runs = {}
            for i, (name, (launcher, extra)) in enumerate(LAYOUTS.items()):
                runs[name] = _sweep(case, launcher, Path(tmp) / f"case{c}-{i}", extra)
                log.info("%s, %s: %.0f s", case.name, name, runs[name]["wall_seconds"])
            rows.append(_row(case.name, case.steps, runs))
    return rows


def _row(case: str, steps: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base = runs["sequential"]
    keys = base["val"].keys()
    return {
        "case": case,
        "runs": base["runs"],
        "steps": steps,
        "layouts": runs,
        "runs_per_hour": {k: 3600 * v["runs"] / v["wall_seconds"] for k, v in runs.items()},
        "speedup": {k: base["wall_seconds"] / v["wall_seconds"] for k, v in runs.items()},
        "max_val_delta": max(
            abs(v["val"][k] - base["val"][k]) for v in runs.values() for k in keys
        ),
    }

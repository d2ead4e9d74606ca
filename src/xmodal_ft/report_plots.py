"""PNG plots of a sweep report: metric vs LR per task and model, validation curves per scheme.

They read the report's data types (`report_types`); the report imports them, not back."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xmodal_ft.atomic import atomic_path  # noqa: E402
from xmodal_ft.report_types import Selection  # noqa: E402


def _by_task_model(selections: list[Selection]) -> dict[tuple[str, str], list[Selection]]:
    grouped: dict[tuple[str, str], list[Selection]] = defaultdict(list)
    for s in selections:
        grouped[(s.group[0], s.group[1])].append(s)
    return grouped


def _label(s: Selection, schemes: set[str]) -> str:
    return s.group[2] if len(schemes) == 1 else f"{s.group[2]} / {s.group[3]}"


def _err(sem: float) -> float:
    return 0.0 if math.isnan(sem) else sem


def lr_curves(selections: list[Selection], out: Path) -> list[Path]:
    """`lr_<task>_<model>.png`: validation and test metric vs LR (log axis), one line per variant,
    error bars = SEM over seeds; LRs a pruner stopped are crossed out (the choice left them out)."""
    paths = []
    for (task, model), group in sorted(_by_task_model(selections).items()):
        schemes = {s.group[3] for s in group}
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, split in zip(axes, ("val", "test"), strict=True):
            for s in group:
                stats = [getattr(p, split) for p in s.per_lr]
                ax.errorbar(
                    [p.lr for p in s.per_lr],
                    [m for m, _ in stats],
                    yerr=[_err(e) for _, e in stats],
                    marker="o",
                    capsize=3,
                    label=_label(s, schemes),
                )
            pruned = [p for p in (p for s in group for p in s.per_lr) if p.pruned]
            if pruned:
                ax.scatter(
                    [p.lr for p in pruned],
                    [getattr(p, split)[0] for p in pruned],
                    marker="x", s=80, color="black", zorder=3, label="pruned (not chosen from)",
                )  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.set_title(f"{task} / {model}: {split} {group[0].metric}")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(group[0].metric)
        axes[1].legend()
        paths.append(_save(fig, out / f"lr_{task}_{model}.png"))
    return paths


def training_curves(selections: list[Selection], out: Path) -> list[Path]:
    """`curves_<task>_<model>.png`: validation metric over training steps at the chosen LR, one
    line per (variant, scheme), mean over the seeds evaluated at each step."""
    paths = []
    for (task, model), group in sorted(_by_task_model(selections).items()):
        schemes = {s.group[3] for s in group}
        key = f"val/{group[0].metric}"
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in group:
            at_step: dict[int, list[float]] = defaultdict(list)
            for run in s.runs:
                for record in run.history:
                    if key in record:
                        at_step[int(record["step"])].append(record[key])
            steps = sorted(at_step)
            means = [statistics.fmean(at_step[t]) for t in steps]
            ax.plot(steps, means, marker=".", label=f"{_label(s, schemes)} (lr {s.best.lr:.0e})")
        ax.set_xlabel("gradient step")
        ax.set_ylabel(key)
        ax.set_title(f"{task} / {model}: validation during training")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, out / f"curves_{task}_{model}.png"))
    return paths


def _save(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write (atomically) and close `fig`."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path

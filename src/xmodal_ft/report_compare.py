"""Published numbers beside ours in the report: which cell a paper number belongs to, the cell
text with the difference, and the paper's steps metric (steps to match the reference's best).

- `--compare rothermel2021` (alias `paper`): Rothermel et al.'s test accuracy per (task, model,
  variant), and their gradient steps to match FPT's best (GPT-2) per (task, variant).
- `--compare survey`: the fine-tuning survey's validation accuracy (GLUE dev, our test split) per
  (task, scheme, adapter, schedule), for any model (the survey ran BERT-base only).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from xmodal_ft import papers
from xmodal_ft.report_types import Run, Selection


@dataclass(frozen=True)
class Source:
    """How one published table maps onto our selections."""

    label: str  # shown in cells: [label value, Δ diff]
    key: tuple[str, ...]  # columns naming a cell, read from a run's config
    column: str  # the published value
    scale: float  # to a fraction in [0, 1]
    metric: str  # our test metric it compares with
    steps_file: str | None = None  # the paper's steps-to-match table (one column per task)
    steps_model: str | None = None  # the model that table is for


SOURCES = {
    "rothermel2021.csv": Source(
        "paper", ("task", "model", "variant"), "test_acc", 0.01, "acc",
        "rothermel2021_steps.csv", papers.ROTHERMEL_STEPS_MODEL,
    ),
    "survey_finetuning.csv": Source(
        "survey", ("task", "scheme", "adapter", "schedule"), "val_acc", 1.0, "acc"
    ),
}  # fmt: skip


class Published(dict):
    """{cell key: published value in [0, 1]} of one table, with its `Source`."""

    def __init__(self, filename: str):
        source = SOURCES[filename]
        super().__init__(
            (tuple(r[k] for k in source.key), float(r[source.column]) * source.scale)
            for r in papers.rows(filename)
            if r[source.column].strip()
        )
        self.source = source
        self.steps: dict[tuple[str, str], float] = {}  # (task, variant) → steps
        for row in papers.rows(source.steps_file) if source.steps_file else []:
            variant = row.pop("variant")
            self.steps |= {(task, variant): float(v) for task, v in row.items()}


def run_key(run: Run, key: tuple[str, ...]) -> tuple[str, ...]:
    """The values of `key` for one run: group names, or scheme.adapter / scheme.schedule."""
    scheme = run.config.get("scheme", {})
    defaults = {"adapter": "none", "schedule": "constant"}
    names = {g: str(run.config[g]["name"]) for g in ("task", "model", "variant", "scheme")}
    return tuple(names.get(k) or str(scheme.get(k, defaults[k])) for k in key)


def value(paper: Published, s: Selection) -> float | None:
    """The published number of selection `s`'s cell, or None."""
    return paper.get(run_key(s.runs[0], paper.source.key))


def ours(s: Selection, metric: str) -> float:
    """Our mean test `metric` over the seeds at the chosen LR."""
    return statistics.fmean(r.tests[metric] for r in s.runs)


def cell_suffix(paper: Published, s: Selection) -> str:
    """` [paper 98.5, Δ -0.3]`; with the compared metric named when the table shows another."""
    label, metric = paper.source.label, paper.source.metric
    published = value(paper, s)
    if published is None:
        return f" [{label} n/a]"
    mine = ours(s, metric)
    diff = f"Δ {100 * (mine - published):+.1f}"
    if metric == s.metric:
        return f" [{label} {100 * published:.1f}, {diff}]"
    return f" [{label} {metric} {100 * published:.1f}, ours {100 * mine:.1f}, {diff}]"


def diff(paper: Published, s: Selection) -> float | None:
    """Ours minus published, as fractions (None without a published number)."""
    published = value(paper, s)
    return None if published is None else ours(s, paper.source.metric) - published


def steps_to_match(run: Run, threshold: float) -> int | None:
    """The first evaluated step whose validation metric reaches `threshold` (None: never)."""
    key = f"val/{run.metric}"
    return next((int(h["step"]) for h in run.history if h.get(key, -1.0) >= threshold), None)


def matched_steps(s: Selection, reference: Selection) -> list[int | None]:
    """Per seed of `s`: steps to match the reference's mean best validation metric (None: never).

    The reference itself counts steps to its own best, as the paper's table does for FPT.
    """
    if s is reference:
        return [r.best_step for r in s.runs]
    return [steps_to_match(r, reference.best.val[0]) for r in s.runs]


def steps_suffix(paper: Published | None, s: Selection) -> str:
    """` [paper 2.4e+05]`: the paper's steps of this task and variant, for its model only."""
    if paper is None or not paper.steps:
        return ""
    task, model, variant, _ = s.group
    steps = paper.steps.get((task, variant)) if model == paper.source.steps_model else None
    return (
        f" [{paper.source.label} n/a]" if steps is None else f" [{paper.source.label} {steps:.1e}]"
    )

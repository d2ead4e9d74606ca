"""The fine-tuning survey: its sentence (`quotes.SURVEY`) per (task, model) without and with the
Houlsby adapter, under both readings; then the tool's own observations (no verdict): the
adapter's and the schedule's effects."""

from __future__ import annotations

from collections.abc import Sequence

from xmodal_ft.claims.cells import cells, of_runs
from xmodal_ft.claims.verdicts import Part, Verdict, both, single
from xmodal_ft.report_types import Selection
from xmodal_ft.significance import ALPHA, Estimate, ahead, mean_of

STLR = "slanted_triangular"
AHEAD = (("fixed", "constant"), ("nesterov", "constant"), ("fixed", STLR))
BEHIND = (("discriminative", "constant"), ("gradual_unfreeze", "constant"))
METRIC = "acc"  # the survey reports accuracy, on CoLA too (not GLUE's MCC)
Row = tuple[str, str, str]  # scheme, adapter, schedule


def survey_row(s: Selection) -> Row:
    """(scheme, adapter, schedule): the survey's row, which the optimizer does not change."""
    scheme = s.runs[0].config["scheme"]
    return scheme["name"], scheme.get("adapter", "none"), scheme.get("schedule", "constant")


def name(row: tuple[str, ...]) -> str:
    return "+".join(p for p in row if p not in ("none", "constant"))


def survey(selections: Sequence[Selection], alpha: float = ALPHA) -> list[Verdict]:
    """Both readings per (task, model, adapter), then the observations per (task, model)."""
    verdicts, observations = [], []
    for (task, model), rows in sorted(cells(selections, survey_row).items()):
        acc: dict[Row, Estimate] = {row: of_runs(s, METRIC) for row, s in rows.items()}
        for adapter in ("none", "houlsby"):
            ahead_rows = [(n, adapter, sch) for n, sch in AHEAD if (n, adapter, sch) in acc]
            behind_rows = [(n, adapter, sch) for n, sch in BEHIND if (n, adapter, sch) in acc]
            if not (ahead_rows or behind_rows):
                continue
            where = f"{task}, {model}, {'with' if adapter != 'none' else 'without'} adapter"
            for reading, parts in _readings(acc, ahead_rows, behind_rows).items():
                verdicts.append(Verdict(where, "s", reading, parts, alpha=alpha))
        observations += _observations(f"{task}, {model}", acc, alpha)
    return verdicts + observations


def _readings(acc: dict[Row, Estimate], ahead_rows: list[Row], behind_rows: list[Row]) -> dict:
    """{reading: parts}: group (the means, no pair reversed) and each (every pair ahead)."""
    if not ahead_rows or not behind_rows:
        missing = "fixed-LR" if not ahead_rows else "layer-wise"
        part = Part(f"needs rows of both sides; no {missing} scheme was run", note="not run")
        return {"group": (part,), "each": (part,)}
    names = ", ".join(map(name, ahead_rows)), ", ".join(map(name, behind_rows))
    means = ahead(mean_of([acc[r] for r in ahead_rows]), mean_of([acc[r] for r in behind_rows]))
    pairs = [(a, b) for a in ahead_rows for b in behind_rows]
    group = (Part(f"mean of {names[0]} significantly ahead of mean of {names[1]}",
                  single(means, True)),)  # fmt: skip
    group += tuple(
        Part(
            f"{name(a)} not significantly behind {name(b)}",
            both([(f"{name(b)} ahead", ahead(acc[b], acc[a]))], False),
        )
        for a, b in pairs
    )
    each = tuple(
        Part(f"{name(a)} significantly ahead of {name(b)}", single(ahead(acc[a], acc[b]), True))
        for a, b in pairs
    )
    return {"group": group, "each": each}


def _observations(where: str, acc: dict[Row, Estimate], alpha: float) -> list[Verdict]:
    """The adapter's and the schedule's effects: the tool's, not the survey's (no verdict)."""
    effects = {
        "adapter": lambda r: (r[0], "houlsby", r[2]),
        "schedule": lambda r: (*r[:2], STLR),
    }
    verdicts = []
    for reading, changed in effects.items():
        pairs = [(changed(r), r) for r in sorted(acc) if changed(r) != r and changed(r) in acc]
        parts = tuple(
            Part(f"{name(new)} vs {name(old)}", single(ahead(acc[new], acc[old]), True))
            for new, old in pairs
        )
        if parts:
            verdicts.append(Verdict(where, "obs", reading, parts, alpha=alpha, observation=True))
    return verdicts

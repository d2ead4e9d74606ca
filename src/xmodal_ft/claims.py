"""The papers' conclusions checked against a sweep: for each claim, do our runs agree?

    python -m xmodal_ft.claims multirun/<date>/<time> [more dirs] --paper rothermel2021|survey

Prints a Markdown table (claim, verdict, the numbers behind it) built from the report's
selections: the LR chosen by mean validation metric and the test metric's mean ± SEM over seeds.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xmodal_ft.report import ReportError, aggregate, load_runs
from xmodal_ft.report_types import LrStats, Selection

FROZEN = ("fpt", "frozen_random")
UNFROZEN = ("unfrozen_pretrained", "unfrozen_random")
VARIANTS = (*FROZEN, *UNFROZEN)
LU_LR = 1e-3  # the single LR Lu et al. trained every variant with
CLAIMS = {
    "a": "(a) unfrozen variants beat frozen ones",
    "b": "(b) the unfrozen variants' best LR is lower than the frozen ones'",
    "c": "(c) unfrozen pretrained matches or beats unfrozen random",
    "d": f"(d) FPT's place among the variants differs between all at lr {LU_LR:g} and each at "
    "its chosen LR",
}


@dataclass(frozen=True)
class Verdict:
    """One claim on one (task, model): whether our runs agree, and the numbers behind it."""

    where: str
    claim: str
    agrees: bool
    evidence: str


def _pct(stats: tuple[float, float]) -> str:
    mean, sem = stats
    return f"{100 * mean:.1f}" + ("" if math.isnan(sem) else f" ± {100 * sem:.1f}")


def _sem(stats: tuple[float, float]) -> float:
    return 0.0 if math.isnan(stats[1]) else stats[1]


def _at_lr(selection: Selection, lr: float) -> LrStats | None:
    return next((s for s in selection.per_lr if math.isclose(s.lr, lr, rel_tol=1e-3)), None)


def _ranking(stats: dict[str, LrStats]) -> list[str]:
    return sorted(stats, key=lambda v: -stats[v].test[0])


def rothermel2021(selections: Sequence[Selection]) -> list[Verdict]:
    """Claims (a)–(d) of Rothermel et al. (2021) for every (task, model) with all four variants."""
    cells: dict[tuple[str, str], dict[str, Selection]] = {}
    for s in selections:
        task, model, variant, _ = s.group
        cells.setdefault((task, model), {})[variant] = s
    verdicts = []
    for (task, model), by_variant in sorted(cells.items()):
        if not set(VARIANTS) <= set(by_variant):
            continue
        where = f"{task}, {model}"
        best = {v: by_variant[v].best for v in VARIANTS}
        tests = ", ".join(f"{v} {_pct(best[v].test)}" for v in VARIANTS)
        lrs = ", ".join(f"{v} {best[v].lr:.0e}" for v in VARIANTS)
        unfrozen_win = min(best[v].test[0] for v in UNFROZEN) > max(best[v].test[0] for v in FROZEN)
        lower_lr = max(best[v].lr for v in UNFROZEN) < min(best[v].lr for v in FROZEN)
        up, ur = best["unfrozen_pretrained"].test, best["unfrozen_random"].test
        matches = up[0] + math.hypot(_sem(up), _sem(ur)) >= ur[0]
        verdicts += [
            Verdict(where, CLAIMS["a"], unfrozen_win, f"test acc: {tests}"),
            Verdict(where, CLAIMS["b"], lower_lr, f"chosen LR: {lrs}"),
            Verdict(where, CLAIMS["c"], matches, f"{_pct(up)} vs {_pct(ur)} (match: within SEM)"),
        ]
        verdicts.append(_fpt_flips(where, by_variant))
    return verdicts


def _fpt_flips(where: str, by_variant: dict[str, Selection]) -> Verdict:
    """(d): FPT's rank among the variants all trained at Lu et al.'s one LR vs at their own
    chosen LRs."""
    claim = CLAIMS["d"]
    fixed = {v: _at_lr(by_variant[v], LU_LR) for v in VARIANTS}
    if any(stats is None for stats in fixed.values()):
        return Verdict(where, claim, False, f"lr {LU_LR:g} is not in every variant's grid")
    at_fixed = _ranking(fixed)  # type: ignore[arg-type]
    at_best = _ranking({v: by_variant[v].best for v in VARIANTS})
    order = " > ".join
    evidence = f"at lr {LU_LR:g}: {order(at_fixed)}; at the chosen LRs: {order(at_best)}"
    return Verdict(where, claim, at_fixed.index("fpt") != at_best.index("fpt"), evidence)


SURVEY_FIXED = ("fixed", "nesterov")
SURVEY_LAYERWISE = ("discriminative", "gradual_unfreeze")


def _survey_key(s: Selection) -> str:
    """`scheme[+houlsby][+slanted_triangular]`: the survey's row, whatever the optimizer."""
    scheme = s.runs[0].config["scheme"]
    parts = [scheme["name"], scheme.get("adapter", "none"), scheme.get("schedule", "constant")]
    return "+".join(p for p in parts if p not in ("none", "constant"))


def survey(selections: Sequence[Selection]) -> list[Verdict]:
    """The survey's SST-2/CoLA conclusions per (task, model): fixed-LR schemes beat the
    layer-wise ones; the slanted-triangular schedule helps the fixed scheme; the Houlsby
    adapter's effect is small (under 2 points) and of mixed sign."""
    cells: dict[tuple[str, str], dict[str, Selection]] = {}
    for s in selections:
        task, model, _, _ = s.group
        cells.setdefault((task, model), {})[_survey_key(s)] = s
    verdicts = []
    for (task, model), by_scheme in sorted(cells.items()):
        where = f"{task}, {model}"
        test = {k: s.best.test for k, s in by_scheme.items()}
        fixed = [k for k in SURVEY_FIXED if k in test]
        layerwise = [k for k in SURVEY_LAYERWISE if k in test]
        if fixed and layerwise:
            numbers = ", ".join(f"{k} {_pct(test[k])}" for k in fixed + layerwise)
            verdicts.append(Verdict(where, "fixed and Nesterov beat discriminative and gradual "
                                    "unfreezing (no adapter, constant schedule)",
                                    min(test[k][0] for k in fixed)
                                    > max(test[k][0] for k in layerwise), numbers))  # fmt: skip
        pairs = [(k, f"{k}+slanted_triangular") for k in ("fixed", "fixed+houlsby")]
        pairs = [(a, b) for a, b in pairs if a in test and b in test]
        if pairs:
            numbers = "; ".join(f"{a} {_pct(test[a])} → {_pct(test[b])}" for a, b in pairs)
            verdicts.append(Verdict(where, "the slanted-triangular schedule improves the fixed "
                                    "scheme", all(test[b][0] > test[a][0] for a, b in pairs),
                                    numbers))  # fmt: skip
        plain = [k for k in test if "+" not in k and f"{k}+houlsby" in test]
        deltas = {k: test[f"{k}+houlsby"][0] - test[k][0] for k in plain}
        if deltas:
            numbers = ", ".join(f"{k} {100 * d:+.1f}" for k, d in deltas.items())
            small = all(abs(d) < 0.02 for d in deltas.values())
            mixed = min(deltas.values()) < 0 < max(deltas.values())
            verdicts.append(Verdict(where, "the Houlsby adapter changes accuracy by under 2 "
                                    "points, in both directions", small and mixed,
                                    f"adapter − none: {numbers}"))  # fmt: skip
    return verdicts


CHECKS: dict[str, Callable[[Sequence[Selection]], list[Verdict]]] = {
    "rothermel2021": rothermel2021,
    "survey": survey,
}


def to_markdown(verdicts: Sequence[Verdict]) -> str:
    """A Markdown table: where, claim, agrees?, evidence."""
    lines = ["| task, model | claim | our runs | numbers |", "|---|---|---|---|"]
    lines += [
        f"| {v.where} | {v.claim} | {'agree' if v.agrees else 'disagree'} | {v.evidence} |"
        for v in verdicts
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xmodal_ft.claims", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun dirs (searched recursively)")
    parser.add_argument("--paper", choices=sorted(CHECKS), default="rothermel2021")
    args = parser.parse_args(argv)
    try:
        verdicts = CHECKS[args.paper](aggregate(load_runs(args.dirs)[0]))
    except ReportError as err:
        parser.exit(2, f"claims: error: {err}\n")
    if not verdicts:
        found = f"no (task, model) in {', '.join(map(str, args.dirs))} has the {args.paper} cells"
        parser.exit(2, f"claims: error: {found}\n")
    print(to_markdown(verdicts), end="")


if __name__ == "__main__":
    main()

"""The papers' conclusions checked against a sweep: for each claim, do our runs agree?

    python -m xmodal_ft.claims multirun/<date>/<time> [more dirs] --paper rothermel2021|survey
    python -m xmodal_ft.claims --published rothermel2021|survey   # the papers' own tables

Prints a Markdown table, one row per part of each claim (what it checks, whether it holds, the
numbers behind it), built from the report's selections: the LR chosen by mean validation metric
and the test accuracy's mean ± SE at it. Every comparison of numbers follows one rule
(`xmodal_ft.significance`): "significantly better" is a difference above 2 combined standard
errors, "matches or outperforms" is "not significantly worse". A claim agrees when every part
holds; it is untested when a part cannot be checked (a missing LR or row, no spread known).
Rows marked "observation" are the tool's, not the paper's: they carry no verdict.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from xmodal_ft import published
from xmodal_ft.report import ReportError, aggregate, load_runs
from xmodal_ft.report_types import LrStats, Selection
from xmodal_ft.significance import Comparison, Estimate, Relation, estimate, mean_of

FROZEN = ("fpt", "frozen_random")
UNFROZEN = ("unfrozen_pretrained", "unfrozen_random")
VARIANTS = (*FROZEN, *UNFROZEN)
LU_LR = 1e-3  # the single LR Lu et al. trained every variant with
AHEAD: set[Relation] = {"better"}
NOT_BEHIND: set[Relation] = {"better", "tie"}
CLAIMS = {
    "a": "(a) fine-tuning the whole model significantly beats freezing it",
    "b": "(b) the unfrozen variants' best LR is lower than the frozen ones'",
    "c": "(c) unfrozen pretrained matches or outperforms unfrozen random",
    "d1": f"(d) part 1: at Lu et al.'s lr {LU_LR:g}, FPT is not significantly behind the unfrozen "
    "variants",
    "d2": "(d) part 2: at each variant's chosen LR, both unfrozen variants are significantly "
    "ahead of FPT",
}


@dataclass(frozen=True)
class Part:
    """One checked part of a claim: what it checks, whether it holds (None: cannot be checked,
    or an observation), and the numbers behind it."""

    checks: str
    holds: bool | None
    numbers: str


@dataclass(frozen=True)
class Verdict:
    """One claim on one (task, model), with its parts; an observation is the tool's own."""

    where: str
    claim: str
    parts: tuple[Part, ...]
    observation: bool = False

    @property
    def agrees(self) -> bool | None:
        """True when every part holds, False when one fails, else None (untested)."""
        if self.observation:
            return None
        if any(p.holds is False for p in self.parts):
            return False
        return None if any(p.holds is None for p in self.parts) else True

    @property
    def label(self) -> str:
        if self.observation:
            return "observation"
        return {True: "agree", False: "disagree", None: "untested"}[self.agrees]


def _part(checks: str, comparison: Comparison, wanted: Collection[Relation]) -> Part:
    relation = comparison.relation
    holds = None if relation == "unknown" else relation in wanted
    return Part(checks, holds, str(comparison))


def _from_stats(stats: LrStats, s: Selection) -> Estimate:
    """The test metric at one LR: mean ± SEM over its seeds (binomial SE for one seed)."""
    mean, sem = stats.test
    if len(stats.seeds) > 1:
        return Estimate(mean, sem, len(stats.seeds))
    return estimate([mean], s.runs[0].test_examples)


def _from_runs(s: Selection, metric: str) -> Estimate:
    """Test `metric` at the chosen LR (e.g. accuracy where the first metric is MCC)."""
    try:
        values = [r.tests[metric] for r in s.runs]
    except KeyError:
        raise ReportError(f"{s.runs[0].path} has no test/{metric} in its results") from None
    return estimate(values, s.runs[0].test_examples)


def _cells(
    selections: Sequence[Selection], row: Callable[[Selection], tuple[str, ...]]
) -> dict[tuple[str, str], dict[tuple[str, ...], Selection]]:
    """Selections by (task, model) and their row; two selections claiming one row fail."""
    cells: dict[tuple[str, str], dict[tuple[str, ...], Selection]] = {}
    for s in selections:
        task, model = s.group[:2]
        rows = cells.setdefault((task, model), {})
        key = row(s)
        if key in rows:
            other = rows[key]
            raise ReportError(
                f"two settings claim the cell {task}, {model}, {'+'.join(key)}: "
                f"{other.runs[0].path.parent} ({', '.join(other.group[2:])}) and "
                f"{s.runs[0].path.parent} ({', '.join(s.group[2:])}); check one setting at a time"
            )
        rows[key] = s
    return cells


def rothermel2021(selections: Sequence[Selection]) -> list[Verdict]:
    """Claims (a)–(d) of Rothermel et al. (2021) for every (task, model) with all four variants.

    A cell is (task, model, variant); runs of two schemes (or adapters, optimizers) in one cell
    are refused."""
    verdicts = []
    for (task, model), rows in sorted(_cells(selections, lambda s: (s.group[2],)).items()):
        by_variant = {key[0]: s for key, s in rows.items()}
        if not set(VARIANTS) <= set(by_variant):
            continue
        where = f"{task}, {model}"
        chosen = {v: _from_stats(by_variant[v].best, by_variant[v]) for v in VARIANTS}
        verdicts += [
            Verdict(where, CLAIMS["a"], _finetuning_wins(chosen)),
            Verdict(where, CLAIMS["b"], (_lower_lr(by_variant),)),
            Verdict(
                where,
                CLAIMS["c"],
                (
                    _part(
                        "unfrozen_pretrained not significantly behind unfrozen_random",
                        Comparison(chosen["unfrozen_pretrained"], chosen["unfrozen_random"]),
                        NOT_BEHIND,
                    ),
                ),
            ),  # fmt: skip
            Verdict(where, CLAIMS["d1"], _fpt_at_lu_lr(by_variant)),
            Verdict(
                where,
                CLAIMS["d2"],
                tuple(
                    _part(
                        f"{v} significantly ahead of fpt",
                        Comparison(chosen[v], chosen["fpt"]),
                        AHEAD,
                    )
                    for v in UNFROZEN
                ),
            ),  # fmt: skip
        ]
    return verdicts


def _finetuning_wins(chosen: dict[str, Estimate]) -> tuple[Part, ...]:
    """(a): the better unfrozen variant significantly ahead of each frozen one."""
    best = max(UNFROZEN, key=lambda v: chosen[v].mean)
    return tuple(
        _part(f"{best} (the better unfrozen) significantly ahead of {v}",
              Comparison(chosen[best], chosen[v]), AHEAD)
        for v in FROZEN
    )  # fmt: skip


def _lower_lr(by_variant: dict[str, Selection]) -> Part:
    checks = "both unfrozen variants' chosen LR below both frozen ones'"
    lrs = {v: by_variant[v].best.lr for v in VARIANTS}
    if published.NO_LR in lrs.values():
        return Part(checks, None, "no LR given (a published table)")
    lower = max(lrs[v] for v in UNFROZEN) < min(lrs[v] for v in FROZEN)
    return Part(checks, lower, "chosen LR: " + ", ".join(f"{v} {lr:.0e}" for v, lr in lrs.items()))


def _fpt_at_lu_lr(by_variant: dict[str, Selection]) -> tuple[Part, ...]:
    """(d) part 1: every variant trained at Lu et al.'s LR; FPT not significantly behind."""
    at = {v: _at_lr(by_variant[v], LU_LR) for v in VARIANTS}
    parts = []
    for v in UNFROZEN:
        checks = f"fpt not significantly behind {v}, both at lr {LU_LR:g}"
        fpt, other = at["fpt"], at[v]
        if fpt is None or other is None:
            missing = " and ".join(n for n, s in (("fpt", fpt), (v, other)) if s is None)
            parts.append(Part(checks, None, f"lr {LU_LR:g} not in the grid of {missing}"))
            continue
        fpt_est = _from_stats(fpt, by_variant["fpt"])
        parts.append(_part(checks, Comparison(fpt_est, _from_stats(other, by_variant[v])),
                           NOT_BEHIND))  # fmt: skip
    return tuple(parts)


def _at_lr(selection: Selection, lr: float) -> LrStats | None:
    return next((s for s in selection.per_lr if math.isclose(s.lr, lr, rel_tol=1e-3)), None)


STLR = "slanted_triangular"
SURVEY_AHEAD = (("fixed", "constant"), ("nesterov", "constant"), ("fixed", STLR))
SURVEY_BEHIND = (("discriminative", "constant"), ("gradual_unfreeze", "constant"))
SURVEY_CLAIM = (
    "fixed, Nesterov and fixed with the slanted-triangular schedule slightly outperform "
    "discriminative LRs and gradual unfreezing"
)
SURVEY_METRIC = "acc"  # the survey reports accuracy, on CoLA too (not GLUE's MCC)


def survey_row(s: Selection) -> tuple[str, str, str]:
    """(scheme, adapter, schedule): the survey's row, which the optimizer does not change."""
    scheme = s.runs[0].config["scheme"]
    return scheme["name"], scheme.get("adapter", "none"), scheme.get("schedule", "constant")


def _name(row: tuple[str, ...]) -> str:
    return "+".join(p for p in row if p not in ("none", "constant"))


def survey(selections: Sequence[Selection]) -> list[Verdict]:
    """The survey's conclusion per (task, model), without and with the Houlsby adapter: the
    fixed-LR schemes outperform the layer-wise ones, checked as (1) their mean accuracy
    significantly ahead of the layer-wise schemes' mean and (2) none of them significantly behind
    any layer-wise scheme ("slightly": no pair needs to differ significantly). Accuracy on every
    task. Then the tool's observations (no verdict): the adapter's and the schedule's effects."""
    verdicts = []
    for (task, model), rows in sorted(_cells(selections, survey_row).items()):
        where = f"{task}, {model}"
        acc = {row: _from_runs(s, SURVEY_METRIC) for row, s in rows.items()}
        for adapter in ("none", "houlsby"):
            ahead = [(n, adapter, sch) for n, sch in SURVEY_AHEAD if (n, adapter, sch) in acc]
            behind = [(n, adapter, sch) for n, sch in SURVEY_BEHIND if (n, adapter, sch) in acc]
            if ahead or behind:
                claim = f"{SURVEY_CLAIM} ({'with' if adapter != 'none' else 'without'} adapter)"
                verdicts.append(Verdict(where, claim, _outperform(acc, ahead, behind)))
        verdicts += _survey_observations(where, acc)
    return verdicts


def _outperform(
    acc: dict[tuple[str, str, str], Estimate],
    ahead: list[tuple[str, str, str]],
    behind: list[tuple[str, str, str]],
) -> tuple[Part, ...]:
    if not ahead or not behind:
        missing = "fixed-LR" if not ahead else "layer-wise"
        return (Part(f"needs rows of both sides; no {missing} scheme was run", None, "not run"),)
    names = ", ".join(map(_name, ahead)), ", ".join(map(_name, behind))
    group = Comparison(mean_of([acc[r] for r in ahead]), mean_of([acc[r] for r in behind]))
    pairs = [(a, b, Comparison(acc[a], acc[b])) for a in ahead for b in behind]
    relations = {c.relation for *_, c in pairs}
    holds = False if "worse" in relations else None if "unknown" in relations else True
    return (
        _part(f"mean of {names[0]} significantly ahead of mean of {names[1]}", group, AHEAD),
        Part(f"none of {names[0]} significantly behind any of {names[1]}", holds,
             "; ".join(f"{_name(a)} vs {_name(b)} {c}" for a, b, c in pairs)),
    )  # fmt: skip


def _survey_observations(where: str, acc: dict[tuple[str, str, str], Estimate]) -> list[Verdict]:
    """The adapter's and the schedule's effects under the rule: the tool's, not the survey's."""
    effects = {
        "the Houlsby adapter against none": lambda r: (r[0], "houlsby", r[2]),
        "the slanted-triangular schedule against constant": lambda r: (*r[:2], STLR),
    }
    verdicts = []
    for title, changed in effects.items():
        pairs = [(changed(row), row) for row in sorted(acc) if changed(row) != row]
        parts = tuple(
            Part(f"{_name(new)} vs {_name(old)}", None, str(Comparison(acc[new], acc[old])))
            for new, old in pairs
            if new in acc
        )
        if parts:
            verdicts.append(Verdict(where, f"tool's observation: {title}", parts, True))
    return verdicts


CHECKS: dict[str, Callable[[Sequence[Selection]], list[Verdict]]] = {
    "rothermel2021": rothermel2021,
    "survey": survey,
}


def to_markdown(verdicts: Sequence[Verdict]) -> str:
    """A Markdown table, a row per part: where, claim and its verdict, part, holds, numbers."""
    lines = ["| task, model | claim | verdict | part | holds | numbers |", "|---" * 6 + "|"]
    marks = {True: "yes", False: "no", None: "—"}
    for v in verdicts:
        for i, p in enumerate(v.parts):
            head = (v.where, v.claim, v.label) if i == 0 else ("", "", "")
            cells = (*head, p.checks, marks[p.holds], p.numbers)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xmodal_ft.claims", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dirs", nargs="*", type=Path, help="multirun dirs (searched recursively)")
    parser.add_argument("--paper", choices=sorted(CHECKS), default="rothermel2021")
    parser.add_argument(
        "--published", choices=sorted(CHECKS),
        help="check a paper's claims on its own published table instead of runs",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if bool(args.dirs) == bool(args.published):
        parser.error("pass multirun dirs, or --published PAPER (not both)")
    paper = args.published or args.paper
    try:
        runs = published.runs(paper) if args.published else load_runs(args.dirs)[0]
        verdicts = CHECKS[paper](aggregate(runs))
    except ReportError as err:
        parser.exit(2, f"claims: error: {err}\n")
    if not verdicts:
        found = f"no (task, model) in {', '.join(map(str, args.dirs))} has the {paper} cells"
        parser.exit(2, f"claims: error: {found}\n")
    print(to_markdown(verdicts), end="")


if __name__ == "__main__":
    main()

"""Rothermel et al. (2021): claims (a)–(d3) of `quotes.ROTHERMEL`, each reading on every (task,
model) cell that has all four variants. (a) and (c) compare the variants at their chosen LRs (the
paper's protocol: best LR by validation); (b) compares the chosen LRs; (d1)–(d3) compare the
variants at one LR shared by all of them, never at their own chosen LRs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

from xmodal_ft import published
from xmodal_ft.claims.cells import at_lr, at_stats, cells, fmt_lr, shared_lrs
from xmodal_ft.claims.quotes import HALF_DECADE, LU_LR
from xmodal_ft.claims.verdicts import Check, Mode, Part, Verdict, both, single
from xmodal_ft.report_types import Selection
from xmodal_ft.significance import ALPHA, Estimate, ahead

FROZEN = ("fpt", "frozen_random")
UNFROZEN = ("unfrozen_pretrained", "unfrozen_random")
VARIANTS = (*FROZEN, *UNFROZEN)
SHORT = {"fpt": "FPT", "frozen_random": "FR", "unfrozen_pretrained": "UP", "unfrozen_random": "UR"}
NO_LR = "no LR given (a published table)"
LR_TOLERANCE = 0.005  # decades: grid values written to 3 digits (3.16e-4 is 10^-3.5)

Found = tuple[str, str, tuple[Part, ...], Mode]  # claim, reading, parts, mode


def rothermel2021(selections: Sequence[Selection], alpha: float = ALPHA) -> list[Verdict]:
    """Every reading of (a)–(d3) on every (task, model) with all four variants, by claim.

    A cell is (task, model, variant); runs of two schemes (or adapters, optimizers) in one cell
    are refused."""
    verdicts = []
    for (task, model), rows in sorted(cells(selections, lambda s: (s.group[2],)).items()):
        by_variant = {key[0]: s for key, s in rows.items()}
        if not set(VARIANTS) <= set(by_variant):
            continue
        chosen = {v: at_stats(by_variant[v].best, by_variant[v]) for v in VARIANTS}
        found: list[Found] = [*_a(chosen), _b(by_variant), _c(chosen)]
        found += [_d1(by_variant), *_d2(by_variant), _d3(by_variant)]
        where = f"{task}, {model}"
        verdicts += [Verdict(where, c, r, parts, mode, alpha) for c, r, parts, mode in found]
    order = {"a": 0, "b": 1, "c": 2, "d1": 3, "d2": 4, "d3": 5}
    return sorted(verdicts, key=lambda v: order[v.claim])  # stable: cells in order within a claim


def _ahead(a: str, b: str, chosen: dict[str, Estimate]) -> Part:
    return Part(f"{a} significantly ahead of {b}", single(ahead(chosen[a], chosen[b]), True))


def _a(chosen: dict[str, Estimate]) -> list[Found]:
    """(a) each: all four unfrozen-frozen pairs; better: the better unfrozen against each."""
    each = tuple(_ahead(u, f, chosen) for u in UNFROZEN for f in FROZEN)
    best = max(UNFROZEN, key=lambda v: chosen[v].mean)
    better = tuple(
        Part(f"{best} (the better unfrozen) significantly ahead of {f}",
             single(ahead(chosen[best], chosen[f]), True))
        for f in FROZEN
    )  # fmt: skip
    return [("a", "each", each, "all"), ("a", "better", better, "all")]


def _no_lr(by_variant: dict[str, Selection]) -> bool:
    return any(p.lr == published.NO_LR for s in by_variant.values() for p in s.per_lr)


def _b(by_variant: dict[str, Selection]) -> Found:
    checks = (
        f"both unfrozen variants' chosen LR at least {HALF_DECADE:g} decade below both frozen ones'"
    )
    if _no_lr(by_variant):
        return "b", "half-decade", (Part(checks, note=NO_LR),), "all"
    lrs = {v: by_variant[v].best.lr for v in VARIANTS}
    highest, lowest = max(lrs[v] for v in UNFROZEN), min(lrs[v] for v in FROZEN)
    gap = math.log10(lowest / highest)
    note = "chosen LR: " + ", ".join(f"{v} {fmt_lr(lr)}" for v, lr in lrs.items())
    note += f"; unfrozen at most {fmt_lr(highest)}, frozen at least {fmt_lr(lowest)}: "
    note += f"{gap:+.1f} decades"
    part = Part(checks, note=note, fixed=gap >= HALF_DECADE - LR_TOLERANCE)
    return "b", "half-decade", (part,), "all"


def _c(chosen: dict[str, Estimate]) -> Found:
    test = ahead(chosen["unfrozen_random"], chosen["unfrozen_pretrained"])
    clauses = both([("unfrozen_random ahead", test)], False)
    part = Part("unfrozen_pretrained not significantly behind unfrozen_random", clauses)
    return "c", "not-behind", (part,), "all"


def _d1(by_variant: dict[str, Selection]) -> Found:
    """At Lu et al.'s LR: FPT not significantly behind either unfrozen variant."""
    parts = []
    for u in UNFROZEN:
        checks = f"fpt not significantly behind {u} at lr {fmt_lr(LU_LR)}"
        fpt, other = at_lr(by_variant["fpt"], LU_LR), at_lr(by_variant[u], LU_LR)
        if _no_lr(by_variant) or fpt is None or other is None:
            missing = " and ".join(n for n, e in (("fpt", fpt), (u, other)) if e is None)
            note = (
                NO_LR if _no_lr(by_variant) else f"lr {fmt_lr(LU_LR)} not in the grid of {missing}"
            )
            parts.append(Part(checks, note=note))
            continue
        parts.append(Part(checks, both([(f"{u} ahead", ahead(other, fpt))], False)))
    return "d1", "lu-lr", tuple(parts), "all"


def _at(s: Selection, lr: float) -> Estimate:
    """The estimate at an LR the selection has (one of the shared LRs)."""
    found = at_lr(s, lr)
    if found is None:
        raise ValueError(f"lr {fmt_lr(lr)} is not in the grid of {' / '.join(s.group)}")
    return found


def _shared(by_variant: dict[str, Selection], variants: Sequence[str]) -> list[float]:
    return [] if _no_lr(by_variant) else shared_lrs([by_variant[v] for v in variants])


def _d2(by_variant: dict[str, Selection]) -> list[Found]:
    """(d2) reversal: a pair significantly ahead each way at two shared LRs; order: the means'
    order of the four differs between two shared LRs."""
    lrs = _shared(by_variant, VARIANTS)
    if len(lrs) < 2:
        note = NO_LR if _no_lr(by_variant) else "fewer than 2 LRs shared by the four variants"
        return [
            ("d2", r, (Part("two shared LRs", note=note),), "all") for r in ("reversal", "order")
        ]
    at = {v: {lr: _at(by_variant[v], lr) for lr in lrs} for v in VARIANTS}
    reversals = []
    for x, y in combinations(VARIANTS, 2):
        ways = tuple(
            tuple(
                Check(ahead(at[a][lr], at[b][lr]), True, f"{a} ahead at lr {fmt_lr(lr)}")
                for lr in lrs
            )
            for a, b in ((x, y), (y, x))
        )
        reversals.append(Part(f"{x} and {y}: each significantly ahead at some shared LR", ways))
    orders = {lr: tuple(sorted(VARIANTS, key=lambda v: -at[v][lr].mean)) for lr in lrs}
    note = "; ".join(
        f"{fmt_lr(lr)}: " + " > ".join(SHORT[v] for v in o) for lr, o in orders.items()
    )
    distinct = len(set(orders.values()))
    order = Part(f"the order differs between shared LRs ({distinct} orders over {len(lrs)} LRs)",
                 note=note, fixed=distinct > 1)  # fmt: skip
    return [("d2", "reversal", tuple(reversals), "any"), ("d2", "order", (order,), "all")]


def _d3(by_variant: dict[str, Selection]) -> Found:
    """At some single LR below Lu et al.'s: both unfrozen variants significantly ahead of FPT."""
    lower = [lr for lr in _shared(by_variant, ("fpt", *UNFROZEN))
             if math.log10(LU_LR / lr) > LR_TOLERANCE]  # fmt: skip
    if not lower:
        note = (
            NO_LR
            if _no_lr(by_variant)
            else f"no LR below {fmt_lr(LU_LR)} shared by fpt and the unfrozen variants"
        )
        return "d3", "lower-lr", (Part(f"an LR below {fmt_lr(LU_LR)}", note=note),), "all"
    parts = []
    for lr in lower:
        fpt = _at(by_variant["fpt"], lr)
        tests = [(f"{u} ahead", ahead(_at(by_variant[u], lr), fpt)) for u in UNFROZEN]
        parts.append(Part(f"at lr {fmt_lr(lr)}: both unfrozen variants significantly ahead of fpt",
                          both(tests, True), key=fmt_lr(lr)))  # fmt: skip
    return "d3", "lower-lr", tuple(parts), "any"

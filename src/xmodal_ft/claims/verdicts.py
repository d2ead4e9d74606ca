"""Verdicts: a claim's reading on one cell, made of parts that hold or not, decided by the tests
at α plainly and with Holm's adjustment over the verdict's tests; and the verdict over cells."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

from xmodal_ft.significance import ALPHA, Comparison, holm


@dataclass(frozen=True)
class Check:
    """A test and the outcome the claim needs from it: significant, or not significant."""

    test: Comparison
    significant: bool
    label: str = ""  # where it was made, when a clause has several (e.g. "at lr 1e-4")


Clause = tuple[Check, ...]  # satisfied when any of its checks comes out as needed
Mode = Literal["all", "any"]  # a verdict holds when all of its parts hold, or any one does


@dataclass(frozen=True)
class Part:
    """One checked part of a verdict: it holds when every clause is satisfied. A part without
    tests has a `fixed` outcome (a comparison of LRs; None: it cannot be checked)."""

    checks: str
    clauses: tuple[Clause, ...] = ()
    note: str = ""  # numbers beyond the tests' (chosen LRs, orders)
    fixed: bool | None = None
    key: str = ""  # a short name, listed where a verdict holds when some part does (an LR)

    @property
    def tests(self) -> list[Comparison]:
        return [c.test for clause in self.clauses for c in clause]


def single(test: Comparison, significant: bool) -> tuple[Clause, ...]:
    """The clauses of a part made of one check."""
    return ((Check(test, significant),),)


def both(tests: Iterable[tuple[str, Comparison]], significant: bool) -> tuple[Clause, ...]:
    """The clauses of a part that needs every (label, test) to come out the same way."""
    return tuple((Check(t, significant, label),) for label, t in tests)


@dataclass(frozen=True)
class Verdict:
    """A claim's reading on one cell: it holds when every part holds (`mode` all) or some part
    does (`mode` any). An observation is the tool's own comparison and carries no verdict."""

    where: str
    claim: str
    reading: str
    parts: tuple[Part, ...]
    mode: Mode = "all"
    alpha: float = ALPHA
    observation: bool = False

    @cached_property
    def tests(self) -> list[Comparison]:
        """The verdict's tests with a p-value: the family Holm adjusts over."""
        return [t for p in self.parts for t in p.tests if not math.isnan(t.p)]

    @cached_property
    def _holm(self) -> dict[int, float]:
        return dict(zip(map(id, self.tests), holm([t.p for t in self.tests]), strict=True))

    def p(self, test: Comparison, adjusted: bool = False) -> float:
        """A test's p-value, plain or Holm-adjusted over this verdict's tests."""
        return self._holm.get(id(test), math.nan) if adjusted else test.p

    def part_holds(self, part: Part, adjusted: bool = False) -> bool | None:
        if not part.clauses:
            return part.fixed
        outcomes = [self._clause(clause, adjusted) for clause in part.clauses]
        return _combine(outcomes, "all")

    def _clause(self, clause: Clause, adjusted: bool) -> bool | None:
        outcomes = []
        for check in clause:
            p = self.p(check.test, adjusted)
            outcomes.append(None if math.isnan(p) else (p < self.alpha) == check.significant)
        return _combine(outcomes, "any")

    def holds(self, adjusted: bool = False) -> bool | None:
        """True, False, or None (untested: a part cannot be checked); None for an observation."""
        if self.observation:
            return None
        return _combine([self.part_holds(p, adjusted) for p in self.parts], self.mode)

    def label(self, adjusted: bool = False) -> str:
        if self.observation:
            return "observation"
        return LABELS[self.holds(adjusted)]


LABELS = {True: "agree", False: "disagree", None: "untested"}


def _combine(outcomes: Sequence[bool | None], mode: str) -> bool | None:
    """All: False if any is False, else None if any is None. Any: the mirror image."""
    decisive = mode == "any"
    if decisive in outcomes:
        return decisive
    return None if None in outcomes or not outcomes else not decisive


@dataclass(frozen=True)
class OverCells:
    """One reading of a claim over the cells it was checked on: holds in every cell (`all`) or in
    most cells that could be tested (`most`, more than half)."""

    claim: str
    reading: str
    quantifier: str  # all: every cell; most: more than half of the cells tested
    verdicts: tuple[Verdict, ...]

    def count(self, adjusted: bool = False) -> tuple[int, int]:
        """(cells that agree, cells tested)."""
        found = [v.holds(adjusted) for v in self.verdicts]
        return found.count(True), sum(h is not None for h in found)

    def holds(self, adjusted: bool = False) -> bool | None:
        found = [v.holds(adjusted) for v in self.verdicts]
        if self.quantifier == "all":
            return _combine(found, "all")
        agree, tested = self.count(adjusted)
        return None if not tested else agree > tested / 2

    def at(self, alpha: float) -> OverCells:
        return replace(self, verdicts=tuple(replace(v, alpha=alpha) for v in self.verdicts))


def over_cells(verdicts: Sequence[Verdict], quantifiers: dict[str, str]) -> list[OverCells]:
    """The verdicts grouped by (claim, reading), in order of first appearance."""
    groups: dict[tuple[str, str], list[Verdict]] = {}
    for v in verdicts:
        if not v.observation:
            groups.setdefault((v.claim, v.reading), []).append(v)
    return [
        OverCells(claim, reading, quantifiers[claim], tuple(found))
        for (claim, reading), found in groups.items()
    ]


def alpha_interval(
    verdict_at: Callable[[float], object], ps: Iterable[float], alpha: float = ALPHA
) -> tuple[float, float]:
    """The widest interval (lo, hi] around `alpha` on which `verdict_at(α)` is unchanged.

    A test is significant when p < α, so verdicts change only where α crosses a p-value: they are
    constant on each (p_i, p_i+1] between consecutive p-values."""
    cuts = sorted({p for p in ps if 0 < p < 1} | {0.0, 1.0})
    right = next(i for i, c in enumerate(cuts) if c >= alpha)  # alpha lies in (cuts[right-1], ..]
    wanted = verdict_at(alpha)
    lo, hi = right - 1, right
    while lo > 0 and verdict_at(cuts[lo]) == wanted:
        lo -= 1
    while hi < len(cuts) - 1 and verdict_at(cuts[hi + 1]) == wanted:
        hi += 1
    return cuts[lo], cuts[hi]

"""The one rule every claim uses to compare two accuracies (docs/reproduction.md, "The rule").

An accuracy is an `Estimate`: its mean over seeds and its standard error (SE), the standard error
of the mean (SEM) over seeds; with one seed, the binomial SE of an accuracy p measured on n test
examples, sqrt(p (1 - p) / n) (the test set's sampling noise alone: it understates the spread
between seeds, so a one-seed verdict is weaker than it looks).

A is *significantly better* than B when mean(A) - mean(B) > K · sqrt(SE(A)² + SE(B)²), with
K = 2; *significantly worse* when the difference is below -K · that; otherwise the two are *tied*
(within noise). "Matches or outperforms" means "not significantly worse".

K = 2 is the two-sided 95 % threshold of a normal difference (1.96), rounded. With the spread
estimated from 3 seeds per side (Welch's t, about 4 degrees of freedom) it is a one-sided test at
about 6 %, two-sided at about 12 %: lenient, as suits 3 seeds; the papers' own tables are checked
under it in tests/test_claims_published.py.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

K = 2.0
Relation = Literal["better", "worse", "tie", "unknown"]


@dataclass(frozen=True)
class Estimate:
    """A mean accuracy (a fraction) and its standard error; `se` is nan when unknown."""

    mean: float
    se: float
    seeds: int

    def __str__(self) -> str:
        spread = "" if math.isnan(self.se) else f" ± {100 * self.se:.1f}"
        return f"{100 * self.mean:.1f}{spread}"


def estimate(values: Sequence[float], test_examples: int | None = None) -> Estimate:
    """The mean of `values` (one per seed) and its SE: the SEM over seeds, or with one seed the
    binomial SE on `test_examples` (nan when that is not known)."""
    mean = statistics.fmean(values)
    if len(values) > 1:
        se = statistics.stdev(values) / math.sqrt(len(values))
    elif test_examples:
        se = math.sqrt(max(mean * (1 - mean), 0.0) / test_examples)
    else:
        se = math.nan
    return Estimate(mean, se, len(values))


def mean_of(estimates: Sequence[Estimate]) -> Estimate:
    """The average of independent estimates (e.g. a group of schemes) and its SE."""
    n = len(estimates)
    mean = statistics.fmean(e.mean for e in estimates)
    se = math.sqrt(sum(e.se**2 for e in estimates)) / n
    return Estimate(mean, se, min(e.seeds for e in estimates))


@dataclass(frozen=True)
class Comparison:
    """A against B under the rule: `relation` is better, worse, tie (within K SE) or unknown
    (no spread known)."""

    a: Estimate
    b: Estimate

    @property
    def diff(self) -> float:
        return self.a.mean - self.b.mean

    @property
    def se(self) -> float:
        return math.hypot(self.a.se, self.b.se)

    @property
    def relation(self) -> Relation:
        if math.isnan(self.se):
            return "unknown"
        if self.diff > K * self.se:
            return "better"
        if self.diff < -K * self.se:
            return "worse"
        return "tie"

    def __str__(self) -> str:
        gap = f"{100 * self.diff:+.1f}"
        if math.isnan(self.se):
            return f"{self.a} vs {self.b}: {gap} (no spread known)"
        ratio = math.inf if self.se == 0 else self.diff / self.se
        return f"{self.a} vs {self.b}: {gap} = {ratio:+.1f} SE ({self.relation})"

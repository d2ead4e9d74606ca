"""The test behind every claim (docs/reproduction.md, "The test"): Welch's t-test from summary
statistics, one-sided, at α = `ALPHA`, with Holm's adjustment over a verdict's tests.

An accuracy is an `Estimate`: a mean, the standard deviation (SD) of what it averages, and how many
observations it averages, over one of two things:
- seeds: the SD of the test accuracy between seeds, n = the number of seeds. The mean's standard
  error (SE) is then the SEM over seeds.
- the test set (one seed): the SD of one example's 0/1 score, √(p(1−p)), n = the test examples;
  the SE is the binomial √(p(1−p)/n). It measures the test set's sampling noise alone and ignores
  the spread between seeds, so a verdict from it is weaker (the tables say so).

`ahead(a, b)` tests whether A is ahead of B: Welch's unequal-variance t-test on those summary
statistics (`scipy.stats.ttest_ind_from_stats`), one-sided. On two one-seed estimates it is the
unpooled two-proportion test on the test set (a t-test on 0/1 scores with about n_A + n_B degrees
of freedom, i.e. the z-test). The effect is printed in SE units, t = (mean A − mean B) / √(SE_A² +
SE_B²), beside the Welch–Satterthwaite degrees of freedom and the p-value. A is significantly
ahead of B when p < α.

α = 0.05, one-sided where the sentence tested is one-sided (every sentence the papers make is:
"outperform", "match or outperform", "inverted"). A verdict that makes m tests also gets Holm's
step-down adjustment over those m (`holm`), shown beside the plain verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

from scipy import stats

ALPHA = 0.05
Over = Literal["seeds", "test set"]


@dataclass(frozen=True)
class Estimate:
    """A mean accuracy (a fraction), the SD of what it averages and how many (`n`, a float for a
    mean of means: its Welch–Satterthwaite degrees of freedom + 1); `sd` is nan when unknown."""

    mean: float
    sd: float
    n: float
    over: Over = "seeds"

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n)

    @property
    def df(self) -> float:
        return self.n - 1

    def __str__(self) -> str:
        """`98.5 ± 0.1`: mean ± SE in points; an SE below 0.1 to two decimals (`± 0.03`)."""
        se = 100 * self.se
        spread = "" if math.isnan(se) else f" ± {se:.1f}" if se >= 0.095 else f" ± {se:.2f}"
        return f"{100 * self.mean:.1f}{spread}"


def on_test_set(mean: float, test_examples: int | None) -> Estimate:
    """One seed's accuracy: its spread is the test set's binomial one (unknown without a size)."""
    if not test_examples:
        return Estimate(mean, math.nan, 1.0, "test set")
    return Estimate(mean, math.sqrt(max(mean * (1 - mean), 0.0)), float(test_examples), "test set")


def estimate(values: Sequence[float], test_examples: int | None = None) -> Estimate:
    """The mean of `values` (one per seed) with the SD between seeds, or, for one seed, the
    test set's binomial spread on `test_examples` (unknown when that is not known)."""
    if len(values) > 1:
        return Estimate(statistics.fmean(values), statistics.stdev(values), float(len(values)))
    return on_test_set(values[0], test_examples)


def from_sem(mean: float, sem: float, seeds: int, test_examples: int | None = None) -> Estimate:
    """An estimate from a mean and its SEM over `seeds` seeds (one seed: the test set's)."""
    if seeds > 1:
        return Estimate(mean, sem * math.sqrt(seeds), float(seeds))
    return on_test_set(mean, test_examples)


def mean_of(estimates: Sequence[Estimate]) -> Estimate:
    """The average of independent estimates (a group of schemes): SE √(Σ SE²) / k, and as `n`
    the Welch–Satterthwaite degrees of freedom of that SE, plus one."""
    k = len(estimates)
    mean = statistics.fmean(e.mean for e in estimates)
    variances = [(e.se / k) ** 2 for e in estimates]
    se = math.sqrt(sum(variances))
    df = _satterthwaite(variances, [e.df for e in estimates])
    over: Over = "seeds" if all(e.over == "seeds" for e in estimates) else "test set"
    return Estimate(mean, se * math.sqrt(df + 1), df + 1, over)


def _satterthwaite(variances: Sequence[float], dfs: Sequence[float]) -> float:
    """The degrees of freedom of a sum of independent variance estimates."""
    denominator = sum(v**2 / df for v, df in zip(variances, dfs, strict=True) if df > 0)
    return sum(variances) ** 2 / denominator if denominator > 0 else math.inf


@dataclass(frozen=True)
class Comparison:
    """Is A ahead of B? One-sided Welch: `t` is the difference in SE units, `p` its p-value (nan
    when a spread is unknown)."""

    a: Estimate
    b: Estimate
    t: float
    df: float
    p: float

    @property
    def diff(self) -> float:
        return self.a.mean - self.b.mean

    @property
    def weak(self) -> bool:
        """A one-seed side: the test set's noise only, not the spread between seeds."""
        return "test set" in (self.a.over, self.b.over)

    def describe(self, p_holm: float | None = None, two_sided: bool = False) -> str:
        """`82.4 ± 1.6 vs 84.1 ± 0.7: -1.7 = -1.0 SE, df 2.8, p 0.81 (Holm 1)`."""
        head = f"{self.a} vs {self.b}: {100 * self.diff:+.1f}"
        if math.isnan(self.p):
            return f"{head} (no spread known: one seed, test set size unknown)"
        p = min(1.0, 2 * min(self.p, 1 - self.p)) if two_sided else self.p
        text = f"{head} = {_ratio(self.t)} SE, df {fmt_df(self.df)}, "
        text += f"{'two-sided ' if two_sided else ''}p {fmt_p(p)}"
        if p_holm is not None:
            text += f" (Holm {fmt_p(p_holm)})"
        return text + ("; one seed: test-set test, weaker" if self.weak else "")


@cache
def ahead(a: Estimate, b: Estimate) -> Comparison:
    """Welch's one-sided t-test from summary statistics: is A's mean above B's?"""
    variances = [a.se**2, b.se**2]
    se = math.sqrt(sum(variances))
    if math.isnan(se):
        return Comparison(a, b, math.nan, math.nan, math.nan)
    if se == 0:  # identical seeds on both sides: the difference is exact
        p = 0.0 if a.mean > b.mean else 1.0 if a.mean < b.mean else 0.5
        return Comparison(a, b, math.copysign(math.inf, a.mean - b.mean), math.inf, p)
    result = stats.ttest_ind_from_stats(
        a.mean, a.sd, a.n, b.mean, b.sd, b.n, equal_var=False, alternative="greater"
    )
    df = _satterthwaite(variances, [a.df, b.df])
    return Comparison(a, b, float(result.statistic), df, float(result.pvalue))


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (in the order given): the i-th smallest is
    max over j ≤ i of min(1, (m − j + 1) · p_(j)); a test is significant when adjusted p < α."""
    m = len(ps)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def _ratio(t: float) -> str:
    return f"{t:+.1f}" if math.isfinite(t) else ("+inf" if t > 0 else "-inf")


def fmt_df(df: float) -> str:
    if not math.isfinite(df):
        return "inf"
    return f"{df:.1f}" if df < 100 else f"{df:.0f}"


def fmt_p(p: float) -> str:
    """Two significant digits: 0.81, 0.032, 0.0041, 2.1e-05."""
    if p == 0 or p >= 1:
        return f"{p:g}"
    return f"{p:.2g}"

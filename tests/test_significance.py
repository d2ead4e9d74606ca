"""The test behind every claim: Welch's one-sided t-test from summary statistics equals Welch's
test on the raw seeds, one seed falls back to the two-proportion test on the test set (flagged),
Holm's adjustment by hand, and the degenerate spreads."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from xmodal_ft.significance import (
    Estimate,
    ahead,
    estimate,
    from_sem,
    holm,
    mean_of,
    on_test_set,
)

A = [0.79, 0.80, 0.81]  # mean 0.80, SD 0.01
B = [0.75, 0.77, 0.79]  # mean 0.77, SD 0.02


def test_welch_from_summary_statistics_equals_welch_on_the_seeds() -> None:
    found = ahead(estimate(A), estimate(B))
    raw = stats.ttest_ind(A, B, equal_var=False, alternative="greater")
    assert found.t == pytest.approx(raw.statistic) and found.p == pytest.approx(raw.pvalue)
    # t by hand: 0.03 / sqrt(0.01²/3 + 0.02²/3); Welch–Satterthwaite df by hand
    assert found.t == pytest.approx(0.03 / math.sqrt(0.0001 / 3 + 0.0004 / 3))
    v1, v2 = 0.0001 / 3, 0.0004 / 3
    assert found.df == pytest.approx((v1 + v2) ** 2 / (v1**2 / 2 + v2**2 / 2))
    assert found.p == pytest.approx(stats.t.sf(found.t, found.df))  # the df we print is scipy's
    assert ahead(estimate(B), estimate(A)).p == pytest.approx(1 - found.p)  # one-sided


def test_a_mean_and_sem_make_the_same_estimate_as_the_seeds() -> None:
    seeds = estimate(A)
    again = from_sem(seeds.mean, seeds.se, 3)
    assert again.sd == pytest.approx(seeds.sd) and again.n == 3 and again.over == "seeds"
    assert str(seeds) == "80.0 ± 0.6"  # mean ± SEM in points


def test_one_seed_is_the_two_proportion_test_on_the_test_set_and_says_it_is_weaker() -> None:
    a, b = on_test_set(0.90, 1000), on_test_set(0.87, 1000)
    assert a.se == pytest.approx(math.sqrt(0.9 * 0.1 / 1000)) and a.over == "test set"
    found = ahead(a, b)
    z = 0.03 / math.sqrt(0.9 * 0.1 / 1000 + 0.87 * 0.13 / 1000)  # unpooled two-proportion z
    assert found.t == pytest.approx(z)
    assert found.p == pytest.approx(stats.norm.sf(z), rel=1e-2)  # df ~ 2000: about the z-test
    assert found.weak and found.describe().endswith("; one seed: test-set test, weaker")
    assert estimate([0.9], test_examples=1000) == a


def test_no_spread_known_gives_no_p_value() -> None:
    unknown = estimate([0.9])  # one seed, test set size unknown
    found = ahead(unknown, on_test_set(0.8, 100))
    assert math.isnan(found.p)
    assert "no spread known" in found.describe()


def test_identical_seeds_on_both_sides_make_an_exact_difference() -> None:
    a, b = estimate([0.9, 0.9, 0.9]), estimate([0.8, 0.8, 0.8])
    assert ahead(a, b).p == 0.0 and ahead(b, a).p == 1.0
    assert ahead(a, a).p == 0.5
    assert "+inf SE" in ahead(a, b).describe()


def test_holm_by_hand() -> None:
    # sorted: 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_a_group_mean_of_one_is_itself_and_two_groups_make_welch() -> None:
    a, b = estimate(A), estimate(B)
    one = mean_of([a])
    assert one.mean == pytest.approx(a.mean) and one.se == pytest.approx(a.se)
    assert one.n == pytest.approx(a.n)
    assert ahead(mean_of([a]), mean_of([b])).p == pytest.approx(ahead(a, b).p)
    pair = mean_of([a, b])
    assert pair.se == pytest.approx(math.hypot(a.se, b.se) / 2)
    v1, v2 = (a.se / 2) ** 2, (b.se / 2) ** 2
    assert pair.df == pytest.approx((v1 + v2) ** 2 / (v1**2 / 2 + v2**2 / 2))


def test_describe_prints_the_effect_in_se_units_with_df_and_p() -> None:
    found = ahead(Estimate(0.80, 0.01 * math.sqrt(3), 3), Estimate(0.77, 0.01 * math.sqrt(3), 3))
    assert found.describe(p_holm=0.04) == (
        "80.0 ± 1.0 vs 77.0 ± 1.0: +3.0 = +2.1 SE, df 4.0, p 0.051 (Holm 0.04)"
    )  # 2.1 SE, which the old rule (K = 2) called significant, is not at 3 seeds a side
    assert found.describe(two_sided=True).endswith("two-sided p 0.1")

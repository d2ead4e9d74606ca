"""The papers' claims checked on selections: each claim quoted verbatim, each reading's verdict
follows the numbers both ways, (a) compares all pairs, (b) needs most cells and half a decade,
(d) compares variants at one shared LR (never at their own chosen LRs), Holm beside plain."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import ROOT
from xmodal_ft import claims
from xmodal_ft.claims.verdicts import Part, Verdict, alpha_interval, single
from xmodal_ft.record.results import write_results
from xmodal_ft.report import ReportError, aggregate
from xmodal_ft.report_types import Run
from xmodal_ft.significance import Comparison, Estimate

PAPERS_TEXT = ROOT.parent / "shared" / "papers"
TEXTS = {"rothermel2021": "rothermel2021_text.md", "survey": "survey_finetuning_text.md"}


def runs_of(
    variant: str,
    curve: dict[float, float],
    scheme: dict | None = None,
    spread: float = 0.01,
    where: str = "sweep",
    task: str = "mnist",
) -> list[Run]:
    """Three seeds per LR with test = val = curve[lr] - spread, curve[lr], + spread (SD spread)."""
    scheme = scheme or {"name": "fixed"}
    label = "+".join(str(v) for v in scheme.values())
    group = (task, "minilm", variant, label)
    config = {"scheme": scheme, "variant": {"name": variant}}
    return [
        Run(Path(where, f"{task}-{variant}-{label}-{lr}-{seed}"), group, lr, seed, "acc",
            acc + d, acc + d, 10, [], config, {"acc": acc + d})
        for lr, acc in curve.items()
        for seed, d in enumerate((-spread, 0.0, spread))
    ]  # fmt: skip


# Rothermel et al.'s picture: at lr 1e-3 FPT is not behind the unfrozen variants; the unfrozen
# variants' best LR is a decade lower, where both are far ahead of FPT, and ahead of both frozen
# variants at their own best LRs.
PAPER_LIKE = {
    "fpt": {1e-4: 0.50, 1e-3: 0.90, 1e-2: 0.92},
    "frozen_random": {1e-4: 0.40, 1e-3: 0.80, 1e-2: 0.85},
    "unfrozen_pretrained": {1e-4: 0.97, 1e-3: 0.90, 1e-2: 0.10},
    "unfrozen_random": {1e-4: 0.96, 1e-3: 0.89, 1e-2: 0.10},
}
Curves = dict[str, dict[float, float]]


def check(curves: Curves, spread: float = 0.01, task: str = "mnist") -> list[claims.Verdict]:
    runs = [r for v, c in curves.items() for r in runs_of(v, c, spread=spread, task=task)]
    return claims.rothermel2021(aggregate(runs))


def verdicts(curves: Curves, spread: float = 0.01) -> dict[tuple[str, str], claims.Verdict]:
    return {(v.claim, v.reading): v for v in check(curves, spread)}


def agreement(curves: Curves, spread: float = 0.01) -> dict[tuple[str, str], bool | None]:
    return {k: v.holds() for k, v in verdicts(curves, spread).items()}


def changed(**cells: dict[float, float]) -> Curves:
    """PAPER_LIKE with some of its numbers replaced."""
    return {v: {**c, **cells.get(v, {})} for v, c in PAPER_LIKE.items()}


ALL_READINGS = [
    ("a", "each"), ("a", "better"), ("b", "half-decade"), ("c", "not-behind"),
    ("d1", "lu-lr"), ("d2", "reversal"), ("d2", "order"), ("d3", "lower-lr"),
]  # fmt: skip


def test_paper_like_sweep_agrees_with_every_reading_of_every_claim() -> None:
    found = verdicts(PAPER_LIKE)
    assert list(found) == ALL_READINGS
    assert {k: v.holds() for k, v in found.items()} == dict.fromkeys(ALL_READINGS, True)
    assert {k: v.holds(adjusted=True) for k, v in found.items()} == dict.fromkeys(
        ALL_READINGS, True
    )


@pytest.mark.parametrize("quote", [c.quote for c in claims.CLAIMS.values()]
                         + [a for c in claims.CLAIMS.values() for a in c.also])  # fmt: skip
def test_each_quoted_sentence_stands_verbatim_in_the_papers_text(quote: claims.Quote) -> None:
    path = PAPERS_TEXT / TEXTS[quote.paper]
    if not path.exists():
        pytest.skip(f"no {path}: the papers' text is not beside the checkout")
    text = path.read_text(encoding="utf-8")
    assert quote.text in text
    assert quote.section.split(", ")[-1] in text  # the section it stands in is the paper's


def test_a_compares_every_unfrozen_variant_with_every_frozen_one() -> None:
    """Unfrozen random only ties FPT: "each" (all four pairs) disagrees, "better" agrees."""
    found = verdicts(changed(unfrozen_random={1e-4: 0.925}))  # 0.5 points ahead of 0.92: a tie
    each, better = found["a", "each"], found["a", "better"]
    assert [p.checks for p in each.parts] == [
        "unfrozen_pretrained significantly ahead of fpt",
        "unfrozen_pretrained significantly ahead of frozen_random",
        "unfrozen_random significantly ahead of fpt",
        "unfrozen_random significantly ahead of frozen_random",
    ]
    assert [each.part_holds(p) for p in each.parts] == [True, True, False, True]
    assert each.holds() is False and len(each.tests) == 4
    assert better.holds() is True and len(better.tests) == 2
    assert better.parts[0].checks == (
        "unfrozen_pretrained (the better unfrozen) significantly ahead of fpt"
    )


def test_a_lead_within_noise_is_not_significant() -> None:
    """97 vs 95 at SD 1 over 3 seeds: 2.4 SE at df 4, p 0.036 (plain: yes); at SD 2: p 0.14."""
    curves = changed(fpt={1e-2: 0.95})
    part = verdicts(curves)["a", "each"].parts[0]
    assert verdicts(curves)["a", "each"].part_holds(part) is True
    assert claims.rothermel2021  # the same gap at twice the spread:
    wide = verdicts(curves, spread=0.02)["a", "each"]
    assert wide.part_holds(wide.parts[0]) is False
    assert "df 4.0, p 0.14" in claims.render.numbers(wide, wide.parts[0])


def test_holm_is_printed_beside_the_plain_verdict_and_can_differ() -> None:
    """Four tests at p 0.03 each: each holds alone, not after Holm's adjustment (0.12)."""
    test = Comparison(Estimate(0.9, 0.01, 3), Estimate(0.8, 0.01, 3), 2.5, 4.0, 0.03)
    verdict = Verdict("mnist, minilm", "a", "each",
                      tuple(Part(f"pair {i}", single(test, True)) for i in range(4)))  # fmt: skip
    assert verdict.holds() is True and verdict.holds(adjusted=True) is False
    assert verdict.label() == "agree" and verdict.label(True) == "disagree"
    assert [verdict.p(t, adjusted=True) for t in verdict.tests] == pytest.approx([0.12] * 4)


def test_b_needs_half_a_decade_in_most_cells() -> None:
    half = verdicts(
        changed(
            fpt={3.16e-4: 0.5},
            frozen_random={3.16e-4: 0.4},
            unfrozen_pretrained={3.16e-4: 0.5},
            unfrozen_random={3.16e-4: 0.5},
        )
    )
    assert half["b", "half-decade"].holds() is True  # 1e-4 vs 1e-2: a decade or more
    step = changed(unfrozen_pretrained={1e-4: 0.5, 1e-3: 0.97}, unfrozen_random={1e-4: 0.5})
    step["unfrozen_random"][3.16e-3] = 0.99
    step["fpt"][3.16e-3] = step["frozen_random"][3.16e-3] = 0.5
    step["unfrozen_pretrained"][3.16e-3] = 0.5
    b = verdicts(step)["b", "half-decade"]  # unfrozen at 1e-3 and 3.16e-3, frozen at 1e-2
    assert b.holds() is True and b.parts[0].note.endswith("+0.5 decades")  # one half-decade step
    step["unfrozen_random"][5e-3] = 1.0
    for v in ("fpt", "frozen_random", "unfrozen_pretrained"):
        step[v][5e-3] = 0.5
    b = verdicts(step)["b", "half-decade"]  # unfrozen at most 5e-3, frozen at 1e-2: 0.3 decades
    assert b.holds() is False and b.parts[0].note.endswith("+0.3 decades")


def test_b_over_cells_is_generally_most_cells_and_the_others_need_every_cell() -> None:
    good = [r for v, c in PAPER_LIKE.items() for r in runs_of(v, c, task="mnist")]
    same_lr = {v: {1e-3: c[1e-3], 1e-2: c[1e-2] if v in ("fpt", "frozen_random") else 0.1}
               for v, c in PAPER_LIKE.items()}  # fmt: skip
    same_lr["unfrozen_pretrained"][1e-2] = same_lr["unfrozen_random"][1e-2] = 0.925  # FPT 0.92
    bad = [r for v, c in same_lr.items() for r in runs_of(v, c, task="cifar10")]
    third = [r for v, c in PAPER_LIKE.items() for r in runs_of(v, c, task="listops")]
    found = claims.rothermel2021(aggregate(good + bad + third))
    quantifiers = {k: c.cells for k, c in claims.CLAIMS.items()}
    over = {(o.claim, o.reading): o for o in claims.over_cells(found, quantifiers)}
    b = over["b", "half-decade"]
    assert b.count() == (2, 3) and b.holds() is True  # generally: 2 of 3 cells
    assert over["a", "better"].count()[0] == 2 and over["a", "better"].holds() is False  # all


def test_c_unfrozen_pretrained_within_noise_of_unfrozen_random_matches_it() -> None:
    assert agreement(changed(unfrozen_pretrained={1e-4: 0.95}))["c", "not-behind"]  # p 0.14
    assert agreement(changed(unfrozen_pretrained={1e-4: 0.93}))["c", "not-behind"] is False


def test_d1_is_fpt_against_the_unfrozen_variants_at_lu_et_als_lr() -> None:
    d1 = verdicts(PAPER_LIKE)["d1", "lu-lr"]
    assert [p.checks for p in d1.parts] == [
        "fpt not significantly behind unfrozen_pretrained at lr 1e-3",
        "fpt not significantly behind unfrozen_random at lr 1e-3",
    ]
    assert claims.render.numbers(d1, d1.parts[0]).startswith(
        "unfrozen_pretrained ahead: 90.0 ± 0.6 vs 90.0 ± 0.6: +0.0 = +0.0 SE"
    )
    assert agreement(changed(fpt={1e-3: 0.85}))["d1", "lu-lr"] is False
    no_lu = {v: {lr: a for lr, a in c.items() if lr != 1e-3} for v, c in PAPER_LIKE.items()}
    d1 = verdicts(no_lu)["d1", "lu-lr"]
    assert (
        d1.holds() is None
        and d1.parts[0].note == "lr 1e-3 not in the grid of fpt and unfrozen_pretrained"
    )


def test_d3_is_one_shared_lower_lr_never_the_variants_chosen_lrs() -> None:
    """At their chosen LRs the unfrozen variants do not beat FPT (0.95 at 1e-3), but at the one
    shared LR 1e-4 both do: (d3) agrees. Then the mirror case: far ahead at their chosen LR 1e-3,
    behind FPT at the lower shared LR 1e-4: (d3) disagrees."""
    inverted = {"fpt": {1e-4: 0.50, 1e-3: 0.95}, "frozen_random": {1e-4: 0.4, 1e-3: 0.9},
                "unfrozen_pretrained": {1e-4: 0.93, 1e-3: 0.2},
                "unfrozen_random": {1e-4: 0.92, 1e-3: 0.2}}  # fmt: skip
    found = verdicts(inverted)
    assert found["d3", "lower-lr"].holds() is True
    assert [p.key for p in found["d3", "lower-lr"].parts] == ["1e-4"]
    assert found["a", "better"].holds() is False  # at the chosen LRs FPT is ahead
    mirror = {"fpt": {1e-4: 0.60, 1e-3: 0.90}, "frozen_random": {1e-4: 0.5, 1e-3: 0.85},
              "unfrozen_pretrained": {1e-4: 0.50, 1e-3: 0.97},
              "unfrozen_random": {1e-4: 0.50, 1e-3: 0.96}}  # fmt: skip
    found = verdicts(mirror)
    assert found["a", "each"].holds() is True  # at the chosen LRs both are far ahead
    assert found["d3", "lower-lr"].holds() is False


def test_d3_prints_every_lr_where_it_holds() -> None:
    at_1e5 = dict(zip(claims.rothermel.VARIANTS, (0.3, 0.2, 0.9, 0.9), strict=True))
    curves = changed(**{v: {1e-5: a} for v, a in at_1e5.items()})
    d3 = verdicts(curves)["d3", "lower-lr"]
    assert [p.key for p in d3.parts] == ["1e-5", "1e-4"]
    assert claims.render._holding(d3) == ["1e-5, 1e-4", "1e-5, 1e-4"]


def test_d2_reversal_needs_a_significant_comparison_that_another_lr_reverses() -> None:
    found = verdicts(PAPER_LIKE)
    reversal = found["d2", "reversal"]
    assert len(reversal.tests) == 3 * 6 * 2  # shared LRs x pairs x directions
    holding = [p.checks.split(":")[0] for p in reversal.parts if reversal.part_holds(p)]
    assert "fpt and unfrozen_pretrained" in holding  # FPT ahead at 1e-2, behind at 1e-4
    flat = {v: dict.fromkeys((1e-4, 1e-3), a) for v, a in
            zip(claims.rothermel.VARIANTS, (0.9, 0.8, 0.95, 0.85), strict=True)}  # fmt: skip
    flat_found = verdicts(flat)
    assert (
        flat_found["d2", "reversal"].holds() is False and flat_found["d2", "order"].holds() is False
    )
    assert flat_found["d2", "order"].parts[0].note == (
        "1e-4: UP > FPT > UR > FR; 1e-3: UP > FPT > UR > FR"
    )


def test_one_seed_uses_the_two_proportion_test_or_stays_untested() -> None:
    one_seed = [r for v, c in PAPER_LIKE.items() for r in runs_of(v, c)[1::3]]  # seed 1 only
    [each, *_] = claims.rothermel2021(aggregate(one_seed))
    assert each.holds() is None and "no spread known" in claims.render.numbers(each, each.parts[0])
    sized = [Run(**{**r.__dict__, "test_examples": 1000}) for r in one_seed]
    [each, *_] = claims.rothermel2021(aggregate(sized))
    assert each.holds() is True
    assert claims.render.numbers(each, each.parts[0]).endswith("one seed: test-set test, weaker")


def test_incomplete_variant_sets_give_no_verdict() -> None:
    assert check({v: c for v, c in PAPER_LIKE.items() if v != "frozen_random"}) == []


def test_two_schemes_in_one_rothermel_cell_are_refused_naming_both_dirs() -> None:
    runs = [r for v, c in PAPER_LIKE.items() for r in runs_of(v, c)]
    runs += runs_of("fpt", PAPER_LIKE["fpt"], {"name": "nesterov"}, where="other")
    with pytest.raises(ReportError, match=r"fpt: sweep \(fpt, fixed\) and other \(fpt, nest"):
        claims.rothermel2021(aggregate(runs))


def test_alpha_interval_is_where_the_verdict_stays_the_same() -> None:
    ps = [0.01, 0.03, 0.2]  # significant at alpha when p < alpha
    assert alpha_interval(lambda a: sum(p < a for p in ps) >= 2, ps) == (0.03, 1.0)
    assert alpha_interval(lambda a: sum(p < a for p in ps) == 2, ps) == (0.03, 0.2)
    assert alpha_interval(lambda a: a > 0.2, ps) == (0.0, 0.2)
    assert alpha_interval(lambda a: True, ps) == (0.0, 1.0)


SURVEY_LIKE = {  # (scheme, adapter, schedule): test acc
    ("fixed", "none", "constant"): 0.90,
    ("fixed", "houlsby", "constant"): 0.91,
    ("fixed", "none", "slanted_triangular"): 0.92,
    ("fixed", "houlsby", "slanted_triangular"): 0.93,
    ("nesterov", "none", "constant"): 0.89,
    ("nesterov", "houlsby", "constant"): 0.88,
    ("discriminative", "none", "constant"): 0.80,
    ("gradual_unfreeze", "none", "constant"): 0.70,
}


def survey_runs(table: dict[tuple[str, str, str], float], optimizer: str = "sgd") -> list[Run]:
    runs = []
    for (name, adapter, schedule), acc in table.items():
        scheme = {"name": name, "adapter": adapter, "schedule": schedule, "optimizer": optimizer}
        runs += runs_of("unfrozen_pretrained", {1e-2: acc}, scheme, where=optimizer)
    return runs


def test_survey_sentence_under_both_readings_and_the_tools_observations() -> None:
    found = claims.survey(aggregate(survey_runs(SURVEY_LIKE)))
    assert [(v.where, v.reading, v.label()) for v in found] == [
        ("mnist, minilm, without adapter", "group", "agree"),
        ("mnist, minilm, without adapter", "each", "agree"),
        ("mnist, minilm, with adapter", "group", "untested"),  # no layer-wise row with adapter
        ("mnist, minilm, with adapter", "each", "untested"),
        ("mnist, minilm", "adapter", "observation"),
        ("mnist, minilm", "schedule", "observation"),
    ]
    group = found[0]
    assert len(group.tests) == 1 + 6
    assert claims.render.numbers(group, group.parts[0]).startswith(
        "90.3 ± 0.3 vs 75.0 ± 0.4: +15.3 = +29.1 SE, df 8.6"  # by hand: SE √3·0.58/3, √2·0.58/2
    )
    close = SURVEY_LIKE | {("discriminative", "none", "constant"): 0.885}
    found = claims.survey(aggregate(survey_runs(close)))
    assert found[0].holds() is True and found[1].holds() is False  # a group, not each pair
    worse = SURVEY_LIKE | {("discriminative", "none", "constant"): 0.95}
    assert claims.survey(aggregate(survey_runs(worse)))[0].holds() is False


def test_survey_compares_accuracy_where_the_first_metric_is_mcc() -> None:
    runs = [Run(r.path, ("cola", *r.group[1:]), r.lr, r.seed, "mcc", 0.1, 0.1, 10, [], r.config,
                {"mcc": 0.1, "acc": r.tests["acc"]}) for r in survey_runs(SURVEY_LIKE)]  # fmt: skip
    found = claims.survey(aggregate(runs))
    assert found[0].where == "cola, minilm, without adapter" and found[0].holds()


def test_two_optimizers_claiming_one_survey_row_are_refused_naming_both_dirs() -> None:
    runs = survey_runs(SURVEY_LIKE) + survey_runs({("fixed", "none", "constant"): 0.5}, "adam")
    with pytest.raises(ReportError, match=r"minilm, fixed\+none\+constant: adam .* and sgd \(unf"):
        claims.survey(aggregate(runs))


def test_main_prints_each_claim_quoted_with_its_readings_and_names_errors(tmp_path, capsys) -> None:
    for variant, curve in PAPER_LIKE.items():
        for run in runs_of(variant, curve):
            payload = {"status": "complete", "config": _config(run), "metric": "acc"}
            payload |= {"val/acc": run.val, "test/acc": run.test, "best_step": 10}
            write_results(tmp_path / f"{variant}-{run.lr}-{run.seed}", payload)
    claims.main([str(tmp_path)])
    out = capsys.readouterr().out
    for claim in claims.ROTHERMEL:
        assert f'**({claim.key})** "{claim.quote.text}" ({claim.quote.section})' in out
        for reading in claim.readings:
            assert f"- **{reading.key}**: {reading.tests}. Why: {reading.why}." in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| mnist, minilm")]
    assert [(r[1], r[3], r[4]) for r in rows] == [
        (reading, "agree", "agree") for _, reading in ALL_READINGS
    ]
    assert "α = 0.05" in out
    with pytest.raises(SystemExit) as exit_info:  # four variants claim the survey's fixed row
        claims.main([str(tmp_path), "--paper", "survey"])
    assert exit_info.value.code == 2
    assert "two settings claim the cell mnist, minilm, fixed+none+constant" in (
        capsys.readouterr().err
    )
    for argv, error in (
        ([], "pass multirun dirs, or --published PAPER"),
        ([str(tmp_path), "--alpha", "0"], "--alpha 0: pass a level between"),
    ):
        with pytest.raises(SystemExit):
            claims.main(argv)
        assert error in capsys.readouterr().err


def test_alpha_changes_the_verdicts_it_should(tmp_path) -> None:
    curves = changed(fpt={1e-2: 0.95})  # (a) better: 97 vs 95, p 0.036
    at_01 = {(v.claim, v.reading): v for v in claims.rothermel2021(
        aggregate([r for v, c in curves.items() for r in runs_of(v, c)]), alpha=0.01)}  # fmt: skip
    assert at_01["a", "better"].holds() is False and verdicts(curves)["a", "better"].holds()
    assert math.isclose(at_01["a", "better"].alpha, 0.01)


def _config(run: Run) -> dict:
    names = dict(zip(("task", "model", "variant"), run.group, strict=False))
    return {g: {"name": n} for g, n in names.items()} | {
        "scheme": {"name": "fixed"}, "lr": run.lr, "seed": run.seed,
    }  # fmt: skip

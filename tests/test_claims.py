"""The papers' claims checked on selections: each verdict follows the numbers, both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmodal_ft import claims
from xmodal_ft.record import write_results
from xmodal_ft.report import aggregate
from xmodal_ft.report_types import Run

LRS = (1e-4, 1e-3, 1e-2)


def runs_of(variant: str, curve: dict[float, float], scheme: dict | None = None) -> list[Run]:
    """Two seeds per LR with test = val = curve[lr] ± 0.01."""
    scheme = scheme or {"name": "fixed"}
    group = ("mnist", "minilm", variant, scheme["name"])
    config = {"scheme": scheme, "variant": {"name": variant}}
    return [
        Run(Path(variant), group, lr, seed, "acc", acc + d, acc + d, 10, [], config)
        for lr, acc in curve.items()
        for seed, d in enumerate((-0.01, 0.01))
    ]


# Rothermel et al.'s picture: at lr 1e-3 FPT beats the unfrozen variants; with their own LRs
# (lower) the unfrozen ones win and unfrozen pretrained beats unfrozen random.
PAPER_LIKE = {
    "fpt": {1e-4: 0.50, 1e-3: 0.90, 1e-2: 0.92},
    "frozen_random": {1e-4: 0.40, 1e-3: 0.80, 1e-2: 0.85},
    "unfrozen_pretrained": {1e-4: 0.97, 1e-3: 0.85, 1e-2: 0.10},
    "unfrozen_random": {1e-4: 0.95, 1e-3: 0.82, 1e-2: 0.10},
}


def verdicts(curves: dict[str, dict[float, float]]) -> dict[str, claims.Verdict]:
    selections = aggregate([r for v, c in curves.items() for r in runs_of(v, c)])
    return {v.claim[1]: v for v in claims.rothermel2021(selections)}


def test_paper_like_sweep_agrees_with_every_claim() -> None:
    found = verdicts(PAPER_LIKE)
    assert {k: v.agrees for k, v in found.items()} == {"a": True, "b": True, "c": True, "d": True}
    assert found["b"].evidence == (
        "chosen LR: fpt 1e-02, frozen_random 1e-02, "
        "unfrozen_pretrained 1e-04, unfrozen_random 1e-04"
    )
    assert found["d"].evidence == (
        "at lr 0.001: fpt > unfrozen_pretrained > unfrozen_random > frozen_random; "
        "at the chosen LRs: unfrozen_pretrained > unfrozen_random > fpt > frozen_random"
    )


def test_each_claim_fails_when_its_numbers_say_so() -> None:
    curves = {v: dict(c) for v, c in PAPER_LIKE.items()}
    curves["fpt"][1e-4] = 0.99  # FPT best overall, at the lowest LR, first at 1e-3 and at its best
    curves["unfrozen_pretrained"][1e-4] = 0.90  # below unfrozen random beyond the SEM
    found = verdicts(curves)
    assert {k: v.agrees for k, v in found.items()} == {
        "a": False, "b": False, "c": False, "d": False,
    }  # fmt: skip


def test_unfrozen_pretrained_within_the_sem_of_unfrozen_random_matches_it() -> None:
    curves = {v: dict(c) for v, c in PAPER_LIKE.items()}
    curves["unfrozen_pretrained"][1e-4] = 0.945  # 0.5 points below, SEMs 1 point each
    assert verdicts(curves)["c"].agrees


def test_incomplete_variant_sets_and_missing_lu_lr_give_no_false_verdict() -> None:
    three = {v: c for v, c in PAPER_LIKE.items() if v != "frozen_random"}
    assert verdicts(three) == {}
    no_lu = {v: {lr: a for lr, a in c.items() if lr != 1e-3} for v, c in PAPER_LIKE.items()}
    assert not verdicts(no_lu)["d"].agrees


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


def survey_verdicts(table: dict[tuple[str, str, str], float]) -> list[claims.Verdict]:
    runs = []
    for (name, adapter, schedule), acc in table.items():
        scheme = {"name": name, "adapter": adapter, "schedule": schedule, "optimizer": "sgd"}
        runs += runs_of("unfrozen_pretrained", {1e-2: acc}, scheme)
    runs = [
        Run(r.path, (*r.group[:3], "+".join(r.config["scheme"].values())), *_rest(r)) for r in runs
    ]
    return claims.survey(aggregate(runs))


def _rest(run: Run) -> tuple:
    return run.lr, run.seed, run.metric, run.val, run.test, run.best_step, [], run.config


def test_survey_claims_read_scheme_adapter_and_schedule_whatever_the_optimizer() -> None:
    found = survey_verdicts(SURVEY_LIKE)
    assert [v.agrees for v in found] == [True, True, True]
    assert found[1].evidence == (
        "fixed 90.0 ± 1.0 → 92.0 ± 1.0; fixed+houlsby 91.0 ± 1.0 → 93.0 ± 1.0"
    )
    assert found[2].evidence == "adapter − none: fixed +1.0, nesterov -1.0"
    worse = SURVEY_LIKE | {("discriminative", "none", "constant"): 0.95}
    worse |= {("fixed", "none", "slanted_triangular"): 0.85}
    assert [v.agrees for v in survey_verdicts(worse)] == [False, False, True]


def test_main_prints_the_table_and_names_missing_cells(tmp_path, capsys) -> None:
    for variant, curve in PAPER_LIKE.items():
        for run in runs_of(variant, curve):
            payload = {"status": "complete", "config": _config(run), "metric": "acc"}
            payload |= {"val/acc": run.val, "test/acc": run.test, "best_step": 10}
            write_results(tmp_path / f"{variant}-{run.lr}-{run.seed}", payload)
    claims.main([str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| task, model | claim | our runs | numbers |"
    assert [line.split(" | ")[2] for line in out[2:]] == ["agree"] * 4
    with pytest.raises(SystemExit) as exit_info:
        claims.main([str(tmp_path), "--paper", "survey"])
    assert exit_info.value.code == 2
    assert "has the survey cells" in capsys.readouterr().err


def _config(run: Run) -> dict:
    names = dict(zip(("task", "model", "variant"), run.group, strict=False))
    return {g: {"name": n} for g, n in names.items()} | {
        "scheme": {"name": "fixed"}, "lr": run.lr, "seed": run.seed,
    }  # fmt: skip

"""Lockstep: R runs trained together equal the same runs trained one after another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_cfg
from xmodal_ft import recipe
from xmodal_ft.lockstep import LockstepError
from xmodal_ft.recipe import RunSpec

GRID = [(1e-3, 0), (1e-2, 0), (1e-3, 1), (1e-2, 1)]  # (lr, seed), seeds contiguous
STEPS = ["max_steps=20", "eval_every=5", "log_every=1", "checkpoint_every=null"]  # dropout on


def specs(root: Path, *overrides: str) -> list[RunSpec]:
    return [
        RunSpec(make_cfg(*STEPS, *overrides, f"lr={lr}", f"seed={seed}"), root / f"{lr}_{seed}")
        for lr, seed in GRID
    ]


def records(run_dir: Path) -> tuple[list[float], list[float], dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in lines if "train/loss" in r]
    accs = [r["val/acc"] for r in lines if "val/acc" in r]
    return losses, accs, json.loads((run_dir / "results.json").read_text())


def assert_lockstep_equals_sequential(tmp_path: Path, *overrides: str) -> None:
    sequential, together = specs(tmp_path / "seq", *overrides), specs(tmp_path / "ls", *overrides)
    for spec in sequential:
        recipe.train([spec])
    recipe.train(together, launcher="lockstep")
    for one, many in zip(sequential, together, strict=True):
        losses, accs, results = records(one.run_dir)
        ls_losses, ls_accs, ls_results = records(many.run_dir)
        assert len(losses) == 20
        assert ls_losses == pytest.approx(losses, rel=1e-4, abs=1e-5)
        assert ls_accs == accs
        for key in ("config_hash", "best_step", "val/acc", "test/acc", "steps"):
            assert ls_results[key] == results[key], key
        assert ls_results["launcher"] == "lockstep" and "launcher" not in results


@pytest.mark.parametrize(
    "variant", ["fpt", "frozen_random", "unfrozen_pretrained", "unfrozen_random"]
)
def test_every_variant_trains_in_lockstep_as_alone(tmp_path, tiny_gpt2_dir, variant) -> None:
    assert_lockstep_equals_sequential(tmp_path, f"variant={variant}", f"model.path={tiny_gpt2_dir}")


@pytest.mark.parametrize(
    "scheme",
    [
        ["scheme=nesterov", "scheme.adapter=houlsby", "scheme.schedule=slanted_triangular"],
        ["scheme=discriminative"],
        pytest.param(["scheme=nesterov"], marks=pytest.mark.slow),
        pytest.param(["scheme=fixed", "scheme.adapter=houlsby"], marks=pytest.mark.slow),
        pytest.param(
            ["scheme=fixed", "scheme.schedule=slanted_triangular"], marks=pytest.mark.slow
        ),
    ],
    ids=["nesterov-houlsby-slanted", "discriminative", "nesterov", "houlsby", "slanted"],
)
def test_schemes_train_in_lockstep_as_alone(tmp_path, tiny_bert_dir, scheme) -> None:
    model = ["model=tiny_bert", f"model.path={tiny_bert_dir}", "variant=unfrozen_pretrained"]
    assert_lockstep_equals_sequential(tmp_path, *model, *scheme)


def test_gradual_unfreezing_is_refused_naming_the_default_launcher(tmp_path) -> None:
    runs = specs(tmp_path, "variant=unfrozen_random", "scheme=gradual_unfreeze")
    with pytest.raises(LockstepError, match="default launcher"):
        recipe.train(runs)

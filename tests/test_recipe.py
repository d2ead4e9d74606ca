"""One run end to end through `run()`: results, metrics file, and clear errors for bad input."""

from __future__ import annotations

import json
import sys

import pytest
from hydra.errors import ConfigCompositionException

from conftest import make_cfg, read_results
from xmodal_ft import models, run, schemes
from xmodal_ft.recipe import ConfigError
from xmodal_ft.tasks import DataError


@pytest.mark.parametrize("variant", ["frozen_random", "unfrozen_random"])
def test_run_writes_results_and_returns_val_metric(tmp_path, variant: str) -> None:
    val = run(make_cfg(f"variant={variant}"), run_dir=tmp_path, choices={"variant": variant})
    results = read_results(tmp_path)
    assert results["val/acc"] == val
    assert results["status"] == "complete"
    assert results["choices"] == {"variant": variant}
    assert results["config"]["variant"]["name"] == variant
    trainable = 66346 if variant == "frozen_random" else results["params"]["total"]
    assert results["params"]["trainable"] == trainable  # FPT: see test_variants
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "val/acc" in r] == [0, 3, 6]


def test_pretrained_variant_runs_from_a_local_dir(tmp_path, tiny_gpt2_dir) -> None:
    cfg = make_cfg("variant=fpt", f"model.path={tiny_gpt2_dir}")
    val = run(cfg, run_dir=tmp_path)
    results = read_results(tmp_path)
    assert results["val/acc"] == val
    # 16 patch tokens of dim 4 → 32: input 4·32+32, output 32·10+10, positions 2048·32, 5 norms.
    assert results["params"]["trainable"] == 160 + 330 + 65536 + 5 * 64 == 66346


@pytest.mark.parametrize("lr", ["0", "-1e-4"])
def test_non_positive_lr_is_rejected(tmp_path, lr: str) -> None:
    with pytest.raises(ConfigError, match="lr=.* must be > 0"):
        run(make_cfg("variant=unfrozen_random", f"lr={lr}"), run_dir=tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("override", ["task=nope", "model=nope", "variant=nope"])
def test_unknown_group_option_lists_the_choices(override: str) -> None:
    with pytest.raises(ConfigCompositionException, match="Available options"):
        make_cfg(override)


def test_missing_data_dir_names_the_fix(tmp_path) -> None:
    cfg = make_cfg("task=mnist", f"task.data_dir={tmp_path / 'absent'}", "variant=unfrozen_random")
    with pytest.raises(DataError, match="data_dir"):
        run(cfg, run_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_model_and_scheme_targets_are_called(tmp_path, monkeypatch) -> None:
    """`model._target_` and `scheme._target_` name the functions the recipe calls."""
    calls = []

    def build(cfg, spec, *, pretrained, seed):
        calls.append(("model", cfg.name, pretrained, seed))
        return models.build(cfg, spec, pretrained=pretrained, seed=seed)

    def scheme(model, cfg, lr):
        calls.append(("scheme", cfg.name, lr))
        return schemes.fixed(model, cfg, lr)

    monkeypatch.setattr(sys.modules[__name__], "my_build", build, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "my_scheme", scheme, raising=False)
    here = __name__
    cfg = make_cfg("variant=unfrozen_random", f"model._target_={here}.my_build",
                   f"scheme._target_={here}.my_scheme", "scheme.name=mine", "seed=3")  # fmt: skip
    run(cfg, run_dir=tmp_path)
    assert calls == [("model", "tiny_gpt2", False, 3), ("scheme", "mine", 1e-3)]
    assert read_results(tmp_path)["config"]["scheme"]["_target_"] == f"{__name__}.my_scheme"

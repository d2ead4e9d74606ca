"""One run end to end through `run()`: results, metrics file, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException

from conftest import make_cfg, read_results
from xmodal_ft import run
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
    cfg = make_cfg("task=mnist", f"task.data_dir={tmp_path / 'absent'}")
    with pytest.raises(DataError, match="data_dir"):
        run(cfg, run_dir=tmp_path)

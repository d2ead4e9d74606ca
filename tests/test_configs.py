"""Every option of every config group composes, and every task/model option builds cheaply."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from conftest import CONF, make_cfg
from xmodal_ft import models, tasks, variants

GROUPS = ("task", "model", "variant", "scheme")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group, option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_group_option_composes_with_its_name(group: str, option: str) -> None:
    cfg = make_cfg(f"{group}={option}")
    assert cfg[group].name == option


@pytest.mark.parametrize("option", options("task"))
def test_every_task_config_binds_to_its_builder(option: str) -> None:
    params = dict(make_cfg(f"task={option}").task)
    name = params.pop("name")
    if name in tasks.text.BUILDERS:
        params["tokenizer"] = "given at run time: the model's path"
    inspect.signature(tasks.BUILDERS[name]).bind(**params)  # raises on a missing or unknown key


@pytest.mark.parametrize("option", options("model"))
def test_every_model_config_fills_model_config(option: str) -> None:
    cfg = models.ModelConfig(**make_cfg(f"model={option}").model)
    assert cfg.pooling in models.POOLINGS


@pytest.mark.parametrize("option", options("variant"))
def test_every_variant_config_fills_variant_config(option: str) -> None:
    cfg = variants.VariantConfig(**make_cfg(f"variant={option}").variant)
    assert cfg.trainable


def test_offline_tasks_build_with_tiny_settings() -> None:
    for overrides in (
        ["task=digits"],
        [
            "task=listops",
            "task.n_train=16",
            "task.n_val=8",
            "task.n_test=8",
            "task.min_len=20",
            "task.max_len=40",
        ],
    ):
        data = tasks.build(make_cfg(*overrides).task)
        assert len(data.train) and len(data.val) and len(data.test)
        assert data.spec.seq_len == data.train.x.shape[1] or data.spec.input_kind == "discrete"


def test_unknown_task_name_lists_the_choices() -> None:
    with pytest.raises(tasks.DataError, match="unknown task 'nope'; choose one of: cifar10"):
        tasks.build({"name": "nope"})

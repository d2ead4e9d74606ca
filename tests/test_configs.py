"""Every option of every config group composes on its schema; schemas reject wrong types and
unknown keys while Hydra composes; shared keys are said once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from conftest import CONF, make_cfg
from xmodal_ft import config, errors, models, schemes, tasks, variants
from xmodal_ft.record import identity

GROUPS = ("task", "model", "variant", "scheme", "logger")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


def raw(group: str, option: str) -> dict:
    return yaml.safe_load((Path(CONF) / group / f"{option}.yaml").read_text())


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    "group, option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_group_option_composes_with_its_name(group: str, option: str) -> None:
    cfg = make_cfg(f"{group}={option}")
    assert cfg[group].name == option


@pytest.mark.parametrize("option", options("task"))
def test_every_task_names_its_builder_and_fits_its_signature(option: str) -> None:
    cfg = make_cfg(f"task={option}").task
    builder = tasks.builder(cfg)
    assert f"{builder.__module__}.{builder.__qualname__}" == cfg._target_
    assert raw("task", option)["defaults"][0] == f"/schema/task/{builder.__name__}@_here_"
    tasks.check(cfg, tokenizer="given at run time: the model's path")


@pytest.mark.parametrize("option", options("model"))
def test_every_model_config_fills_model_config(option: str) -> None:
    cfg = models.ModelConfig(**make_cfg(f"model={option}").model)
    assert cfg.pooling in models.POOLINGS and cfg._target_ == "xmodal_ft.models.build"


@pytest.mark.parametrize("option", options("variant"))
def test_every_variant_config_fills_variant_config(option: str) -> None:
    cfg = variants.VariantConfig(**make_cfg(f"variant={option}").variant)
    assert cfg.trainable


@pytest.mark.parametrize("option", options("scheme"))
def test_every_scheme_names_its_function(option: str) -> None:
    cfg = schemes.SchemeConfig(**make_cfg(f"scheme={option}").scheme)
    assert cfg._target_ == f"xmodal_ft.schemes.{option}"
    schemes.check(cfg)


@pytest.mark.parametrize(
    "group, schema", [("model", config.ModelConfig), ("scheme", config.SchemeConfig)]
)
def test_model_and_scheme_yamls_hold_only_what_differs(group: str, schema: type) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(schema)}
    defaults |= {f.name: f.default_factory() for f in dataclasses.fields(schema)
                 if f.default_factory is not dataclasses.MISSING}  # fmt: skip
    for option in options(group):
        values = raw(group, option)
        assert values.pop("defaults")[0].startswith(f"/schema/{group}")
        same = {k for k, v in values.items() if k != "name" and k in defaults and defaults[k] == v}
        assert not same, f"conf/{group}/{option}.yaml repeats schema defaults: {same}"


def test_fpt_trainable_patterns_are_written_once() -> None:
    fpt, frozen = make_cfg("variant=fpt").variant, make_cfg("variant=frozen_random").variant
    assert list(frozen.trainable) == list(fpt.trainable) and frozen.pretrained is False
    texts = [p.read_text() for p in (Path(CONF) / "variant").glob("*.yaml")]
    assert sum("*position_embeddings*" in text for text in texts) == 1


def test_unhashed_keys_have_one_source() -> None:
    cfg = composed()
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == sorted(identity.NOT_HASHED)
    assert not (set(identity.NOT_HASHED) - {"logger", "sweep"}) - set(cfg)  # root keys exist
    assert "exclude_keys: ${not_hashed:}" in (Path(CONF) / "config.yaml").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lr=abc"], "Error merging override lr=abc: Value 'abc' of type 'str' could not be "
                     "converted to Float"),
        (["max_steps=abc"], "Error merging override max_steps=abc: Value 'abc' of type 'str' "
                            "could not be converted to Integer"),
        (["scheme.decay=0.5"], "Could not override 'scheme.decay': Key 'decay' not in "
                               "'BaseSchemeConfig' (its keys: name, adapter, reduction, schedule, "
                               "cut_frac, ratio, optimizer)"),
        (["scheme=discriminative", "scheme.decay=x"], "Error merging override scheme.decay=x: "
         "Value 'x' of type 'str' could not be converted to Float"),
        (["task.n_train=many"], "Error merging override task.n_train=many: Value 'many' of type "
                                "'str' could not be converted to Integer"),
        (["task=listops", "task.keep_end=maybe"], "Error merging override task.keep_end=maybe: "
         "Value 'maybe' is not a valid bool (type str)"),
        (["model.dropout=high"], "Error merging override model.dropout=high: Value 'high' of type "
                                 "'str' could not be converted to Float"),
        (["variant.pretrained=sometimes"], "Error merging override variant.pretrained=sometimes: "
         "Value 'sometimes' is not a valid bool (type str)"),
        (["seeds=abc"], "Error merging override seeds=abc: Invalid value assigned: str is not a "
                        "ListConfig, list or tuple."),
        (["progres=false"], "Could not override 'progres': Key 'progres' not in 'Config' (its "
                            "keys: task, model,"),
        (["task=nope"], "In 'config': Could not find 'task/nope' Available options in 'task': "
                        "cifar10, cifar10_lra, cola, digits, listops, mnist, rte, sst2"),
    ],
)  # fmt: skip
def test_schemas_reject_wrong_types_and_unknown_keys_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(*overrides)
    assert errors._hydra_message(err.value).startswith(message)
    assert "\n" not in errors._hydra_message(err.value)


def test_task_schema_comes_from_the_builder_signature() -> None:
    schema = {f.name: f for f in dataclasses.fields(config.task_schema(tasks.BUILDERS["sst2"]))}
    assert list(schema) == ["_target_", "name", "data_dir", "hub_id", "max_len", "val_size",
                            "split_seed", "n_train", "n_test"]  # fmt: skip
    assert schema["_target_"].default == "xmodal_ft.tasks.text.sst2"
    assert (schema["max_len"].type, schema["max_len"].default) == (int, 128)
    assert schema["n_train"].type == int | None and schema["val_size"].default == 872
    assert sorted(tasks.BUILDERS) == options("task")  # one built-in builder per task option


def test_untyped_task_keys_are_checked_against_the_builder_before_building() -> None:
    cfg = make_cfg("task=listops", "+task.depth=3").task  # `+` bypasses the schema
    with pytest.raises(tasks.DataError) as err:
        tasks.check(cfg)
    assert str(err.value).startswith(
        "task listops (xmodal_ft.tasks.listops.listops): Key 'depth' not in 'ListopsTask'; its "
        "keys are the builder's keyword arguments: data_dir, n_train, n_val, n_test, min_len,"
    )


def test_offline_tasks_build_with_tiny_settings() -> None:
    for overrides in (
        ["task=digits"],
        ["task=listops", "task.n_train=16", "task.n_val=8", "task.n_test=8", "task.min_len=20",
         "task.max_len=40"],
    ):  # fmt: skip
        data = tasks.build(make_cfg(*overrides).task)
        assert len(data.train) and len(data.val) and len(data.test)
        assert data.spec.seq_len == data.train.x.shape[1] or data.spec.input_kind == "discrete"


def test_unknown_task_name_lists_the_choices() -> None:
    with pytest.raises(tasks.DataError, match="unknown task 'nope'; choose one of: cifar10, "):
        tasks.build({"name": "nope"})
    with pytest.raises(tasks.DataError, match="task._target_=no.such.builder cannot be imported"):
        tasks.build({"name": "x", "_target_": "no.such.builder"})

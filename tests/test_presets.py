"""Paper presets (conf/experiment): the settings each fixes, a few steps of each on tiny settings,
and the warning of a sweep whose budget is far below the papers'."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import CONF, make_cfg, read_results
from glue_helpers import write_cola, write_sst2
from test_images import write_cifar, write_mnist
from xmodal_ft import papers, run

PRESETS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))
ROTHERMEL = ["rothermel2021_mnist", "rothermel2021_cifar10", "rothermel2021_cifar10_lra",
             "rothermel2021_listops"]  # fmt: skip
GRID = "1e-6,3.16e-6,1e-5,3.16e-5,1e-4,3.16e-4,1e-3,3.16e-3,1e-2"
LU_CIFAR = {"crop_padding": 4, "flip": True, "max_rotation": 20}


def preset(*overrides: str) -> DictConfig:
    """The real config with `overrides` and nothing else, hydra node included."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_the_papers_presets_exist() -> None:
    assert {*ROTHERMEL, "rothermel2021", "survey_sst2", "survey_cola"} <= set(PRESETS)


@pytest.mark.parametrize("name", ROTHERMEL)
def test_rothermel_presets_fix_the_protocol(name: str) -> None:
    cfg = preset(f"experiment={name}")
    assert cfg.task.name == name.removeprefix("rothermel2021_")
    assert (cfg.model.name, cfg.variant.name, cfg.scheme.name) == ("gpt2", "fpt", "fixed")
    assert cfg.scheme.optimizer == "adam" and cfg.grad_clip == 1.0
    assert (cfg.batch_size, cfg.max_steps, cfg.max_epochs) == (8, 400_000, None)
    assert (cfg.eval_every, cfg.patience) == (1000, 20)
    assert (cfg.model.input_init, cfg.model.input_gain) == ("orthogonal", 1.41)
    assert cfg.model.dropout is None  # GPT-2's own 0.1, as Lu et al.'s from_pretrained
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params == {"lr": GRID, "seed": "0,1,2"}


def test_rothermel_task_settings_are_lu_et_als() -> None:
    cifar = preset("experiment=rothermel2021_cifar10").task
    assert cifar.normalize == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}
    assert cifar.augment == LU_CIFAR
    lra = preset("experiment=rothermel2021_cifar10_lra").task
    assert lra.normalize == {"mean": [0.5], "std": [0.5]} and lra.augment == LU_CIFAR
    mnist = preset("experiment=rothermel2021_mnist")
    assert mnist.task.get("augment") is None and mnist.model.input_dropout == 0.1
    listops = preset("experiment=rothermel2021_listops")
    assert (listops.task.max_len, listops.task.gen_max_len, listops.task.keep_end) == (
        512, 2000, False
    )  # fmt: skip
    assert (listops.task.min_len, listops.task.n_train) == (500, 96000)
    assert listops.model.input_dropout == 0.0  # Lu et al.'s embedding input has none


def test_one_run_of_a_preset_drops_the_sweep() -> None:
    cfg = preset("experiment=rothermel2021_mnist", "~sweep", "lr=1e-4")
    assert cfg.hydra.mode is None and cfg.lr == 1e-4 and cfg.max_steps == 400_000


@pytest.mark.parametrize("task, epochs, every", [("sst2", 5, 500), ("cola", 10, 100)])
def test_survey_presets_fix_the_survey_setting_on_sgd(task: str, epochs: int, every: int) -> None:
    cfg = preset(f"experiment=survey_{task}")
    assert (cfg.task.name, cfg.model.name, cfg.variant.name) == (
        task,
        "bert",
        "unfrozen_pretrained",
    )
    assert (cfg.lr, cfg.batch_size, cfg.max_epochs, cfg.eval_every) == (0.01, 32, epochs, every)
    assert cfg.patience is None and cfg.scheme.optimizer == "sgd"
    assert cfg.hydra.sweeper.params == {"seed": "0,1,2"}
    nesterov = preset(f"experiment=survey_{task}", "scheme=nesterov")
    assert (nesterov.scheme.optimizer, nesterov.scheme.momentum) == ("sgd", 0.9)
    adam = preset(f"experiment=survey_{task}_lr2e-5", "scheme=discriminative")
    assert (adam.lr, adam.scheme.optimizer, adam.max_epochs) == (2e-5, None, epochs)


def tiny_data(name: str, tmp_path: Path, tiny_bert_text: Path, tiny_gpt2_dir: Path) -> list[str]:
    """Overrides giving preset `name` tiny data and a tiny "pretrained" model."""
    if "sst2" in name or "cola" in name:
        write = write_sst2 if "sst2" in name else write_cola
        return [f"task.data_dir={write(tmp_path / 'glue')}", "task.val_size=4", "batch_size=8",
                "model=tiny_bert", f"model.path={tiny_bert_text}", "max_epochs=null"]  # fmt: skip
    gpt2 = ["model=tiny_gpt2", f"model.path={tiny_gpt2_dir}"]
    if "mnist" in name:
        write_mnist(tmp_path / "mnist", n_train=24)
        return [*gpt2, f"task.data_dir={tmp_path / 'mnist'}"]
    if "cifar10" in name:
        write_cifar(tmp_path / "cifar", per_batch=8)
        return [*gpt2, f"task.data_dir={tmp_path / 'cifar'}"]
    if name.endswith("listops"):
        return [*gpt2, "task.n_train=16", "task.n_val=8", "task.n_test=8", "task.min_len=20",
                "task.gen_max_len=60", "task.max_len=30", "task.max_depth=4"]  # fmt: skip
    return [*gpt2, "task.n_train=64"]  # digits


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs_a_few_steps_on_tiny_settings(
    tmp_path: Path, tiny_gpt2_dir: Path, tiny_bert_text: Path, name: str
) -> None:
    overrides = [f"experiment={name}", *tiny_data(name, tmp_path, tiny_bert_text, tiny_gpt2_dir)]
    overrides += ["max_steps=2", "eval_every=1", "eval_batch_size=8", "progress=false",
                  "cache_dir=null"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    val = run(cfg, run_dir=tmp_path / "run", choices={"experiment": name})
    results = read_results(tmp_path / "run")
    assert results["val/" + results["metric"]] == val and results["steps"] == 2


# ---- a sweep far below the papers' budget warns, once ---------------------------------------


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(papers, "_warned", False)


def test_papers_budgets_come_from_their_tables() -> None:
    mnist = papers.budget("mnist", n_train=54_000)
    assert (mnist.preset, mnist.examples) == ("rothermel2021", 4.6e4 * 8)  # the fewest steps
    sst2 = papers.budget("sst2", n_train=1000)
    assert (sst2.preset, sst2.examples) == ("survey", 5 * 1000)
    assert papers.budget("cola", n_train=100).examples == 10 * 100
    assert papers.budget("digits", n_train=1000) is None


def test_short_sweep_without_preset_warns_once(tmp_path, caplog, fresh_warning) -> None:
    cfg = make_cfg("task=mnist", f"task.data_dir={tmp_path / 'mnist'}", "variant=unfrozen_random")
    write_mnist(tmp_path / "mnist", n_train=24)
    with caplog.at_level(logging.WARNING, logger="xmodal_ft.papers"):
        for seed in (0, 1):
            run(cfg, run_dir=tmp_path / f"s{seed}", choices={"experiment": None}, sweep="sweep")
    [record] = [r for r in caplog.records if r.name == "xmodal_ft.papers"]
    assert record.getMessage().startswith("budget 6 steps of batch 8 (48 examples) is 7667x")
    needed = "GPT-2 variants needed 4.6e+04-2.4e+05 steps of batch 8 on mnist to match FPT's best"
    assert needed in record.getMessage()
    assert "experiment=rothermel2021_mnist" in record.getMessage()


@pytest.mark.parametrize(
    ("kwargs", "warns"),
    [
        ({"sweep": None, "choices": {}}, False),  # a plain single run: a smoke test, say
        ({"sweep": None, "choices": {"experiment": "cpu_study_mnist"}}, True),  # a preset's run
        ({"sweep": "sweep", "choices": {"experiment": "cpu_study_mnist"}}, True),  # its sweep
    ],
)
def test_single_runs_of_presets_and_sweeps_warn(tmp_path, caplog, fresh_warning, kwargs, warns):
    write_mnist(tmp_path / "mnist", n_train=24)
    cfg = make_cfg("task=mnist", f"task.data_dir={tmp_path / 'mnist'}", "variant=unfrozen_random")
    with caplog.at_level(logging.WARNING, logger="xmodal_ft.papers"):
        run(cfg, run_dir=tmp_path / "run", **kwargs)
    assert bool([r for r in caplog.records if r.name == "xmodal_ft.papers"]) == warns


def test_the_survey_budget_counts_epochs_of_the_full_training_set(
    tmp_path, caplog, fresh_warning, tiny_bert_text
) -> None:
    """A task.n_train subsample does not shrink the papers' budget (5 epochs of all of SST-2)."""
    write_sst2(tmp_path / "SST-2", n_train=400)
    cfg = make_cfg(
        "task=sst2", f"task.data_dir={tmp_path / 'SST-2'}", "task.n_train=8", "task.val_size=8",
        "max_epochs=5", "batch_size=8", "model=tiny_bert", f"model.path={tiny_bert_text}",
        "variant=unfrozen_pretrained",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="xmodal_ft.papers"):
        run(cfg, run_dir=tmp_path / "run", choices={"experiment": "cpu_study_sst2"}, sweep="s")
    [record] = [r for r in caplog.records if r.name == "xmodal_ft.papers"]
    assert "(40 examples)" in record.getMessage()  # 5 epochs of 8 sentences ...
    assert "trained 5 epochs of batch 32 on sst2" in record.getMessage()  # ... of all 392


def test_budget_of_the_papers_order_does_not_warn(fresh_warning) -> None:
    assert not papers.warn_if_short("mnist", max_steps=40_000, batch_size=8, n_train=54_000)
    assert papers.warn_if_short("mnist", max_steps=4_000, batch_size=8, n_train=54_000)

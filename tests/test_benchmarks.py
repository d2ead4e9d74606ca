"""The benchmark tool (benchmarks/, a checkout tool): every case composes as `train.py`'s config,
ablations turn off only what they name, and the package does not ship it."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks import __main__ as bench_main
from benchmarks import suite
from benchmarks.cases import Case, run_config
from benchmarks.tools import ablation
from conftest import tiny_model
from xmodal_ft import allocator, schemes


@pytest.mark.parametrize("section", sorted(suite.SECTIONS))
def test_every_case_is_a_train_py_config(section: str) -> None:
    for job in suite.SECTIONS[section](quick=True):
        case = job.case
        cfg, overrides = run_config(case)
        assert overrides[0] == f"model={case.model}" and f"lr={case.lr}" in overrides
        assert cfg.task == {"_target_": "benchmarks.cases.synthetic", "name": "synthetic",
                            "seq_len": case.seq_len, "token_dim": case.token_dim,
                            "n_train": case.batch * (case.warmup + case.steps)}  # fmt: skip
        assert (cfg.max_steps, cfg.eval_every) == (case.warmup + case.steps, cfg.max_steps + 1)
        assert cfg.variant.pretrained == (cfg.model.path is not None)  # FPT: frozen_random
        assert cfg.variant.name.startswith("unfrozen") == (case.variant == "unfrozen")
        if case.arch is not None:
            assert cfg.model.path is None and dict(cfg.model.arch) == case.arch
        for key, value in case.model_overrides.items():
            assert cfg.model[key] == value


def test_a_pretrained_model_keeps_its_weights_and_a_tiny_one_trains_random() -> None:
    base = Case("", "minilm", "fpt", seq_len=8, token_dim=3, batch=2, steps=1)
    assert run_config(base)[0].variant.name == "fpt"
    assert run_config(base.with_(variant="unfrozen"))[0].variant.name == "unfrozen_pretrained"
    assert run_config(base.with_(model="tiny_gpt2"))[0].variant.name == "frozen_random"


def test_ablations_turn_off_only_the_optimisation_they_name() -> None:
    model = tiny_model()
    with ablation("foreach_adam"):
        groups = schemes.build(model, schemes.SchemeConfig(), lr=1e-3).optimizer.param_groups
    assert all(g["foreach"] and not g["fused"] for g in groups)
    with ablation("glibc_free"):
        assert allocator.keep_freed_memory() is False
    groups = schemes.build(model, schemes.SchemeConfig(), lr=1e-3).optimizer.param_groups
    assert all(g["fused"] for g in groups)  # the product's own, outside the block
    with pytest.raises(ValueError, match="unknown ablation 'x'"), ablation("x"):
        pass


def test_the_command_line_refuses_unknown_sections_and_lockstep_cases(capsys) -> None:
    for argv in (["--sections", "nope"], ["--cases", "tiny_gpt2 unfrozen,nope"]):
        with pytest.raises(SystemExit):
            bench_main._parse(argv)
    assert "unknown cases ['nope']" in capsys.readouterr().err
    args = bench_main._parse(["--quick", "--sections", "lockstep", "--cases", "minilm fpt"])
    assert (args.sections, args.cases) == (["lockstep"], {"minilm fpt"})


def test_the_installed_package_has_no_benchmarks() -> None:
    assert importlib.util.find_spec("xmodal_ft.bench") is None

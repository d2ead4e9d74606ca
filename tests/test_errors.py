"""The bad-input matrix: `python train.py <mistake>` ends in one line on stderr naming what was
wrong and the fix, with exit status 1, no traceback and nothing half-written; checks that need no
data run before any is built. Driven in-process through train.py's own `main` (as the command line
runs it: Hydra's composition, errors.main, the job), so each case takes about a second."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT
from glue_helpers import write_sst2
from test_images import write_mnist
from xmodal_ft import errors
from xmodal_ft.recipe import ConfigError

TINY = ["model=tiny_gpt2", "variant=unfrozen_random", "task.n_train=64", "max_steps=2",
        "eval_every=1", "progress=false", "cache_dir=null"]  # fmt: skip
MNIST = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"  # noqa: E501


def load_entrypoint():
    spec = importlib.util.spec_from_file_location("train_entrypoint", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main.__wrapped__.__module__ = "__main__"  # Hydra then finds conf/ beside train.py
    return module


ENTRYPOINT = load_entrypoint()


def cli(monkeypatch, capsys, run_dir: Path, *args: str) -> tuple[int, list[str]]:
    """Run `python train.py <args>` in this process: (exit status, stderr lines)."""
    hydra = [f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={run_dir}", "hydra/job_logging=none",
             "hydra/hydra_logging=none"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["train.py", *args, *hydra])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        with pytest.raises(SystemExit) as exit:
            errors.main(ENTRYPOINT.main)
    finally:
        GlobalHydra.instance().clear()
    return exit.value.code, capsys.readouterr().err.splitlines()


def assert_nothing_written(run_dir: Path) -> None:
    written = {p.name for p in run_dir.rglob("*")} - {".hydra", "config.yaml", "hydra.yaml",
                                                       "overrides.yaml"}  # fmt: skip
    assert not written, written


@pytest.mark.parametrize(
    "args, message",
    [
        (["lr=0"], "lr=0.0 must be > 0 (e.g. lr=1e-4)"),
        (["lr=-1"], "lr=-1.0 must be > 0 (e.g. lr=1e-4)"),
        (["task=nope"], "In 'config': Could not find 'task/nope' Available options in 'task': "
                        "cifar10, cifar10_lra, cola, digits, listops, mnist, rte, sst2"),
        (["model=gpt3"], "In 'config': Could not find 'model/gpt3' Available options in 'model': "
                         "bert, distilgpt2, gpt2, minilm, tiny_bert, tiny_gpt2"),
        (["lr=abc"], "Error merging override lr=abc: Value 'abc' of type 'str' could not be "
                     "converted to Float"),
        (["max_steps=abc"], "Error merging override max_steps=abc: Value 'abc' of type 'str' "
                            "could not be converted to Integer"),
        (["scheme.decay=0.5"], "Could not override 'scheme.decay': Key 'decay' not in "
                               "'BaseSchemeConfig' (its keys: name, adapter, reduction, schedule, "
                               "cut_frac, ratio, optimizer)"),
        (["batch_size=0"], "batch_size=0 must be a positive integer"),
        (["model=tiny_gpt2"], "model tiny_gpt2 has no pretrained weights (model.path=null): use a "
         "random-init variant (variant=unfrozen_random or frozen_random), or set "
         "model.path=<hub id|dir>"),
        (["model=tiny_bert", "variant=unfrozen_random", "scheme.adapter=houlsby",
          "model.arch.model_type=distilbert"], "scheme.adapter=houlsby does not support model "
         "type 'distilbert'; supported: bert, roberta, xlm-roberta, electra, gpt2: choose such a "
         "model or scheme.adapter=none"),
        (["scheme.adapter=lora"], "unknown scheme.adapter 'lora'; choose one of: none, houlsby, "
                                  "or a module.function"),
        (["task._target_=no_such.build"], "task._target_=no_such.build cannot be imported "
                                           "(Error loading 'no_such.build':"),
        (["threads=many"], "threads=many must be auto, a positive integer, or null"),
    ],
)  # fmt: skip
def test_config_mistakes_end_in_one_line(monkeypatch, capsys, tmp_path, args, message) -> None:
    status, lines = cli(monkeypatch, capsys, tmp_path / "run", *args)
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message}")
    assert_nothing_written(tmp_path / "run")


def test_data_dir_mistakes_end_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    absent, empty, corrupt = tmp_path / "absent", tmp_path / "empty", tmp_path / "corrupt"
    empty.mkdir()
    write_mnist(corrupt)
    train_images = corrupt / "train-images-idx3-ubyte.gz"
    train_images.write_bytes(train_images.read_bytes()[:100])  # a truncated download
    hint = (f"set task.data_dir=<dir with {MNIST.replace(', ', '.gz, ')}.gz (gzipped or raw)> or "
            "task.data_dir=null to load ylecun/mnist from the hub")  # fmt: skip
    cases = {
        absent: f"task.data_dir {absent} does not exist; {hint}",
        empty: f"task.data_dir {empty} holds none of {MNIST}; {hint}",
        corrupt: f"cannot read IDX file {train_images} (",
    }
    for data_dir, message in cases.items():
        run_dir = tmp_path / f"run-{data_dir.name}"
        status, lines = cli(monkeypatch, capsys, run_dir, *TINY, "task=mnist",
                            f"task.data_dir={data_dir}")  # fmt: skip
        assert status == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {message}")
        assert_nothing_written(run_dir)
    status, lines = cli(monkeypatch, capsys, tmp_path / "glue", *TINY, "task=sst2",
                        f"task.data_dir={empty}", "model=tiny_bert",
                        f"model.path={write_sst2(tmp_path / 'unused')}")  # fmt: skip
    assert status == 1 and lines == [
        f"error: model.path={tmp_path / 'unused'}: {tmp_path / 'unused'} holds no config.json; "
        "point it at a dir written by save_pretrained (or a hub id), or use model=minilm works "
        "offline"
    ]


def test_glue_and_listops_data_dirs_name_the_fix(monkeypatch, capsys, tmp_path, tiny_bert_text):
    status, lines = cli(monkeypatch, capsys, tmp_path / "glue", *TINY, "task=sst2",
                        f"task.data_dir={tmp_path}", "model=tiny_bert",
                        f"model.path={tiny_bert_text}")  # fmt: skip
    assert status == 1 and lines == [
        f"error: task.data_dir {tmp_path} holds no GLUE SST-2 files: put train.tsv and dev.tsv "
        f"there (or in {tmp_path / 'SST-2'}), or set task.data_dir=null to load them from the hub"
    ]
    status, lines = cli(monkeypatch, capsys, tmp_path / "lo", *TINY, "task=listops",
                        f"task.data_dir={tmp_path / 'lra'}")  # fmt: skip
    assert status == 1 and lines == [
        f"error: ListOps data_dir {tmp_path / 'lra'} is not a directory; put LRA's "
        "basic_{train,val,test}.tsv there, or set task.data_dir=null to generate"
    ]


def test_hub_model_offline_fails_fast_naming_model_path(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached
    started = time.perf_counter()
    status, lines = cli(monkeypatch, capsys, tmp_path / "run", "model=gpt2")
    assert time.perf_counter() - started < 10  # transformers alone retries for about 30 s
    assert status == 1 and lines == [
        "error: cannot load model gpt2 (openai-community/gpt2): it is not in the local Hugging "
        "Face cache and HF_HUB_OFFLINE=1 forbids downloading it: unset it where the network is "
        "reachable, or save it with save_pretrained and set model.path=<that dir> (model=minilm "
        "works offline)"
    ]


def test_missing_model_dir_names_the_fix(monkeypatch, capsys, tmp_path) -> None:
    status, lines = cli(monkeypatch, capsys, tmp_path / "run", f"model.path={tmp_path / 'gpt2'}")
    assert status == 1 and lines == [
        f"error: model.path={tmp_path / 'gpt2'}: no such directory; point it at a dir written by "
        "save_pretrained, or at a hub id such as openai-community/gpt2"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_fix(monkeypatch, capsys, tmp_path) -> None:
    status, lines = cli(monkeypatch, capsys, tmp_path / "run", *TINY, "device=cuda")
    assert status == 1 and lines == [
        "error: device=cuda but torch sees no CUDA device (torch.cuda.is_available() is False): "
        "use device=auto (CUDA when present) or device=cpu"
    ]


def test_wandb_without_login_names_the_fix(monkeypatch, capsys, tmp_path) -> None:
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    status, lines = cli(monkeypatch, capsys, tmp_path / "run", *TINY, "logger=wandb")
    assert status == 1 and lines == [
        f"error: logger=wandb but W&B has no API key for api.wandb.ai (no WANDB_API_KEY, nothing "
        f"in {tmp_path / 'netrc'}): run `wandb login` once, or log offline with WANDB_MODE=offline "
        "(or logger.mode=offline; `wandb sync` uploads later), or use logger=local"
    ]
    assert_nothing_written(tmp_path / "run")
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "0" * 40 + "\n")
    from xmodal_ft.record import trackers

    trackers.check_tracker({"name": "wandb"})  # logged in: no error
    trackers.check_tracker({"name": "wandb", "mode": "offline"})


def test_checks_without_data_run_before_any_is_built(monkeypatch, capsys, tmp_path) -> None:
    """ListOps builds a 400 MB cache; a tiny model's missing weights are known before."""
    started = time.perf_counter()
    status, lines = cli(monkeypatch, capsys, tmp_path / "run", "task=listops", "model=tiny_gpt2",
                        f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert status == 1 and "variant=unfrozen_random" in lines[0]
    assert time.perf_counter() - started < 10 and not (tmp_path / "cache").exists()


def test_debug_and_hydra_full_error_keep_the_traceback(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "lr=0", "debug=true",
                                      f"hydra.run.dir={tmp_path}", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none"])  # fmt: skip
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        with pytest.raises(ConfigError, match="lr=0.0 must be > 0"):
            errors.main(ENTRYPOINT.main)
    finally:
        GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["train.py", "lr=abc", f"hydra.run.dir={tmp_path}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    try:
        with pytest.raises(Exception, match="Error merging override lr=abc"):
            errors.main(ENTRYPOINT.main)
    finally:
        GlobalHydra.instance().clear()


def test_a_multirun_names_the_failed_job_then_the_error(monkeypatch, capsys, tmp_path) -> None:
    status, lines = cli(monkeypatch, capsys, tmp_path / "sweep", "-m", "lr=0,-1")
    assert status == 1 and lines == [
        "Error executing job with overrides: ['lr=0']",  # Hydra's line naming the job
        "error: lr=0.0 must be > 0 (e.g. lr=1e-4)",
    ]


def test_one_line_joins_hydras_lists_and_drops_its_locations() -> None:
    assert errors.one_line("a\n\nAvailable options in 'task':\n\tx\n\ty\nConfig search path:\n\t"
                           "provider=hydra") == "a Available options in 'task': x, y"  # fmt: skip
    assert str(errors.UserError("first\n  second")) == "first second"

"""Multirun directories named by their overrides (found again by a relaunch, the same under the
lockstep launcher), files readable as the umask allows, cache keys free of the install path."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from glue_helpers import write_sst2
from test_errors import ENTRYPOINT
from xmodal_ft import errors, tasks
from xmodal_ft.record import identity, results, trackers
from xmodal_ft.tasks import cache

SWEEP = ["model=tiny_gpt2", "variant=unfrozen_random", "task.n_train=64", "max_steps=2",
         "eval_every=1", "progress=false", "cache_dir=null", "hydra/job_logging=none",
         "hydra/hydra_logging=none"]  # fmt: skip
NAME = "eval_every=1,lr={lr},max_steps=2,model=tiny_gpt2,task.n_train=64,variant=unfrozen_random"


@pytest.mark.parametrize(
    "overrides, name",
    [
        ("lr=0.001,seed=1", "lr=0.001,seed=1"),
        ("", "defaults"),
        ("model=tiny_gpt2,scheme.adapter=houlsby", "model=tiny_gpt2,scheme.adapter=houlsby"),
        ("task.data_dir=/data/mnist,lr=1e-4", "task.data_dir=_data_mnist,lr=1e-4-"),
        ("seeds=[0,1],lr=0.01", "seeds=_0,1_,lr=0.01-"),
        ("task.max_len=512," * 12 + "lr=1", "task.max_len=512," * 4 + "task.max"),
    ],
)
def test_run_dir_names_are_the_overrides_hashed_only_when_needed(overrides, name) -> None:
    key = identity.run_key(overrides)
    assert key.startswith(name) and len(key) <= identity.MAX_NAME
    assert key == identity.run_key(overrides)  # a relaunch finds it
    if key != name:
        assert len(key.rsplit("-", 1)[1]) == 12  # the hash of the whole
    assert identity.run_key("task.data_dir=/a/b") != identity.run_key("task.data_dir=/a_b")


def multirun(sweep_dir: Path, *overrides: str, monkeypatch) -> None:
    args = ["train.py", "-m", *SWEEP, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    monkeypatch.setattr(sys, "argv", args)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        errors.main(ENTRYPOINT.main)
    finally:
        GlobalHydra.instance().clear()


def test_multirun_dirs_are_readable_found_again_and_the_same_under_lockstep(
    tmp_path, monkeypatch
) -> None:
    multirun(tmp_path / "basic", "lr=0.001,0.003", monkeypatch=monkeypatch)
    names = sorted(p.parent.name for p in (tmp_path / "basic").glob("*/results.json"))
    assert names == [NAME.format(lr=lr) for lr in ("0.001", "0.003")]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "basic").rglob("results.json")}
    multirun(tmp_path / "basic", "lr=0.001,0.003", "progress=true", monkeypatch=monkeypatch)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished: skipped, untouched
    multirun(tmp_path / "lockstep", "lr=0.001,0.003", "hydra/launcher=lockstep",
             monkeypatch=monkeypatch)  # fmt: skip
    lockstep = sorted(p.parent.name for p in (tmp_path / "lockstep").glob("*/results.json"))
    assert lockstep == names
    for name in names:
        basic, together = (json.loads((tmp_path / d / name / "results.json").read_text())
                           for d in ("basic", "lockstep"))  # fmt: skip
        assert basic["config_hash"] == together["config_hash"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_metrics_and_caches_take_the_umasks_mode(tmp_path, umask, mode) -> None:
    cache._memory.clear()
    old = os.umask(umask)
    try:
        results.write_results(tmp_path / "run", {"status": "complete"})
        tracker = trackers.LocalTracker(tmp_path / "run")
        tracker.log({"loss": 1.0}, step=0)
        tracker.close()
        tasks.build({"name": "digits", "n_train": 32}, cache_dir=str(tmp_path / "cache"))
    finally:
        os.umask(old)
    files = [tmp_path / "run" / "results.json", tmp_path / "run" / "metrics.jsonl",
             *(tmp_path / "cache").glob("*.pt")]  # fmt: skip
    assert len(files) == 3
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {mode}
    assert not list(tmp_path.rglob(".*.tmp"))


def test_text_cache_key_does_not_depend_on_where_the_tokenizer_is_installed(
    tmp_path, tiny_bert_text
) -> None:
    here, there = tmp_path / "a" / "tok", tmp_path / "b" / "elsewhere"
    for copy in (here, there):
        shutil.copytree(tiny_bert_text, copy)
    assert cache.tokenizer_key(str(here)) == cache.tokenizer_key(str(there))
    cfg = {"name": "sst2", "data_dir": str(write_sst2(tmp_path / "glue")), "val_size": 4}
    cache._memory.clear()
    for copy in (here, there):
        tasks.build(cfg, cache_dir=str(tmp_path / "cache"), tokenizer=str(copy))
    assert len(list((tmp_path / "cache").glob("sst2-*.pt"))) == 1
    (there / "added_tokens.json").write_text('{"[NEW]": 99}')
    assert cache.tokenizer_key(str(here)) != cache.tokenizer_key(str(there))
    assert cache.tokenizer_key("org/hub-id") == "org/hub-id"

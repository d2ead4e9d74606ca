"""Thread counts: the default is the cores a process may run on, whatever the load; a resumed run
keeps the count it trained on, or warns naming both counts."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, make_cfg, read_results
from xmodal_ft import checkpoint, run, threads

TWO_CORES = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or threads.cores() < 2, reason="needs 2 cores"
)


def test_the_default_thread_count_does_not_depend_on_the_load(monkeypatch) -> None:
    cfg = make_cfg()
    assert cfg.threads is None
    monkeypatch.setattr(threads, "_busy", lambda: 99)  # a busy machine
    assert threads.set_threads(cfg.threads) == threads.cores()
    assert threads.set_threads("auto") == 1  # auto: what the load leaves


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_the_default_thread_count_is_the_size_of_the_processs_core_set() -> None:
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from xmodal_ft import threads; print(threads.set_threads(None))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["1"], out.stderr  # pinned to one core: one thread


def test_a_resumed_count_is_kept_or_a_warning_names_both_counts(caplog) -> None:
    cores = threads.cores()
    with caplog.at_level(logging.WARNING, logger="xmodal_ft"):
        assert threads.set_threads(None, resumed=[1]) == 1
        assert threads.set_threads("auto", resumed=[1]) == 1
        assert threads.set_threads(1, resumed=[1]) == 1
        assert not caplog.records
        assert threads.set_threads(None, resumed=[cores + 1]) == cores
        assert threads.set_threads(2, resumed=[1]) == 2
        assert threads.set_threads(None, resumed=[1, 2]) == cores
    assert [r.getMessage() for r in caplog.records] == [
        f"resumed run(s) trained on {cores + 1} thread(s) before and continue on {cores} (this "
        f"process may run on {cores} cores): results may differ in the last digits from an "
        "uninterrupted run's",
        "resumed run(s) trained on 1 thread(s) before and continue on 2 (threads=2 is set): "
        "results may differ in the last digits from an uninterrupted run's",
        f"resumed run(s) trained on 1 and 2 thread(s) before and continue on {cores} (runs "
        "trained together share one count): results may differ in the last digits from an "
        "uninterrupted run's",
    ]


class Killed(Exception):
    """Stands in for a kill right after a checkpoint."""


def kill_after_checkpoint(monkeypatch, step: int) -> list[int]:  # noqa: ANN001
    """Make the run stop right after its checkpoint at `step`; returns the thread counts the
    saved checkpoints recorded."""
    save, counts = checkpoint.save, []

    def save_then_kill(path, state, *args) -> None:  # noqa: ANN001
        save(path, state, *args)
        counts.append(state.threads)
        if state.step == step:
            monkeypatch.setattr(checkpoint, "save", save)
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_kill)
    return counts


class Threads:
    """A tracker recording torch's thread count at every record the run logs."""

    def __init__(self) -> None:
        self.counts: set[int] = set()

    def log(self, values: dict, step: int) -> None:
        self.counts.add(torch.get_num_threads())

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


@TWO_CORES
def test_a_run_resumes_on_the_thread_count_it_started_with(tmp_path, monkeypatch) -> None:
    """Started on a busy machine (threads=auto: 1 thread), killed, resumed on a quiet one (auto
    would give 2): it continues on 1 thread and ends as the same run trained on 1 thread."""
    overrides = ["variant=unfrozen_random", "max_steps=8", "eval_every=2", "log_every=1"]
    run(make_cfg(*overrides, "threads=1"), tmp_path / "one")
    cfg = make_cfg(*overrides, "threads=auto")
    monkeypatch.setattr(threads, "_busy", lambda: threads.cores() - 1)
    recorded = kill_after_checkpoint(monkeypatch, step=4)
    with pytest.raises(Killed):
        run(cfg, tmp_path / "resumed")
    assert recorded == [1, 1]
    monkeypatch.setattr(threads, "_busy", lambda: 0)
    tracker = Threads()
    monkeypatch.setattr("xmodal_ft.record.trackers.build_tracker", lambda *args: tracker)
    run(cfg, tmp_path / "resumed")
    assert tracker.counts == {1}
    one, resumed = read_results(tmp_path / "one"), read_results(tmp_path / "resumed")
    assert resumed["threads"] == one["threads"] == 1
    for key in ("val/acc", "test/acc", "best_step", "steps", "history"):
        assert resumed[key] == one[key], key


@TWO_CORES
def test_a_run_that_cannot_keep_its_thread_count_warns(tmp_path, monkeypatch, caplog) -> None:
    """Checkpointed on 2 threads, resumed in a process that may run on one core."""
    cfg = make_cfg("variant=unfrozen_random", "max_steps=4", "eval_every=2", "threads=null")
    kill_after_checkpoint(monkeypatch, step=2)
    with pytest.raises(Killed):
        run(cfg, tmp_path)
    [path] = tmp_path.glob("checkpoint-*.pt")
    assert checkpoint._read(path)["loop"]["threads"] == threads.cores()
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        with caplog.at_level(logging.WARNING, logger="xmodal_ft"):
            run(cfg, tmp_path)
    finally:
        os.sched_setaffinity(0, cores)
    assert (
        f"resumed run(s) trained on {len(cores)} thread(s) before and continue on 1 (this "
        "process may run on 1 cores)" in caplog.text
    )
    assert json.loads((tmp_path / "results.json").read_text())["threads"] == 1

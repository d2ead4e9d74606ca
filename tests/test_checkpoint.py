"""Checkpoints: a fit interrupted after a checkpoint and resumed equals an uninterrupted fit; a
damaged or foreign file is reported and its run starts afresh; files are durable and hold weights
only."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from conftest import Interrupt, KillAt, as_runs, sign_task, tiny_model
from xmodal_ft import checkpoint, schemes
from xmodal_ft.checkpoint import LoopState
from xmodal_ft.engine import FitConfig, fit
from xmodal_ft.lockstep.stack import Stacked
from xmodal_ft.record import trackers

CFG = FitConfig(
    batch_size=8, max_steps=16, eval_every=4, checkpoint_every=4, log_every=2, progress=False
)


FIXED = schemes.SchemeConfig()


class StepLog:
    """A tracker that keeps the steps logged."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def log(self, values: dict[str, float], step: int) -> None:
        self.steps.append(step)

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


def train(checkpoint_path=None, tracker=None, scheme=FIXED, lr=3e-3):
    torch.manual_seed(0)  # dropout draws from the global generator
    model = tiny_model()
    plan = schemes.build(model, scheme, lr=lr, total_steps=CFG.max_steps)
    return model, fit(model, plan, sign_task(64), CFG, tracker, checkpoint_path)  # 8 steps/epoch


RESUMABLE = [
    ("fixed", "constant", 10, 8),  # killed at 10, resumed from 8 (epoch 1 starts at 8)
    ("gradual_unfreeze", "constant", 10, 8),  # resumes before the epoch-1 unfreeze
    ("gradual_unfreeze", "slanted_triangular", 14, 12),  # resumes after it
    ("nesterov", "slanted_triangular", 7, 4),  # resumes on the schedule's decline
]


@pytest.mark.parametrize(("name", "schedule", "kill_at", "saved_at"), RESUMABLE)
def test_resumed_fit_matches_uninterrupted_fit_exactly(
    tmp_path, name: str, schedule: str, kill_at: int, saved_at: int
) -> None:
    scheme = schemes.SchemeConfig(name, schedule=schedule)
    model_ref, ref = train(scheme=scheme)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupt):
        train(path, KillAt(kill_at), scheme)
    assert torch.load(path, weights_only=True)["loop"]["step"] == saved_at
    torch.manual_seed(123)  # a new process: the checkpoint restores the RNG state
    logged = StepLog()
    model, resumed = train(path, logged, scheme)
    assert logged.steps[0] == saved_at  # it resumed: the first thing logged is that step's eval
    assert resumed.best_val == ref.best_val
    assert resumed.test == ref.test
    assert resumed.best_step == ref.best_step
    assert resumed.history == ref.history
    for (name, p), q in zip(model.named_parameters(), model_ref.parameters(), strict=True):
        assert torch.equal(p, q), name
        assert p.requires_grad == q.requires_grad, name


class KilledAfter:
    """Logs to `inner`, then raises once a line at `step` is on disk (a kill just after it)."""

    def __init__(self, inner: trackers.LocalTracker, step: int):
        self.inner, self.step = inner, step

    def log(self, values: dict[str, float], step: int) -> None:
        self.inner.log(values, step)
        if step >= self.step:
            self.inner.close()
            raise Interrupt(step)

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


def test_a_resumed_runs_metrics_file_holds_each_logged_line_once(tmp_path) -> None:
    reference = trackers.LocalTracker(tmp_path / "reference")
    train(tracker=reference)
    reference.close()
    run_dir, path = tmp_path / "killed", tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupt):
        train(path, KilledAfter(trackers.LocalTracker(run_dir), 10))
    metrics = run_dir / trackers.METRICS
    with metrics.open("a") as file:
        file.write('{"step": 11, "train/lo')  # the line being written when it was killed
    saved_at = torch.load(path, weights_only=True)["loop"]["step"]
    assert saved_at == 8 and '"step": 10' in metrics.read_text()  # logged after the checkpoint
    resumed = trackers.LocalTracker(run_dir, start_step=saved_at)
    train(path, resumed)
    resumed.close()
    assert metrics.read_text() == (tmp_path / "reference" / trackers.METRICS).read_text()
    trackers.LocalTracker(run_dir, start_step=0).close()  # no checkpoint: it starts afresh
    assert metrics.read_text() == ""


# ---- damaged, foreign and durable files ---------------------------------------------------------


class Planted:
    """A pickled object that creates `marker` when unpickled by a loader that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    middle = len(data) // 2
    if how == "truncated":  # a copy cut short
        path.write_bytes(data[:middle])
    elif how == "corrupt":  # flipped bytes inside a tensor's data: torch.load alone accepts them
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64])
                         + data[middle + 64 :])  # fmt: skip
    elif how == "empty":
        path.write_bytes(b"")
    else:  # an object that is not a weight, where the loop state belongs
        payload = torch.load(path, weights_only=True)
        payload["loop"]["history"] = [Planted(path.parent / "code-ran")]
        torch.save(payload, path)


@pytest.mark.parametrize("how", ["truncated", "corrupt", "empty", "object"])
def test_an_unreadable_checkpoint_is_reported_once_and_the_run_starts_afresh(
    tmp_path, caplog, how: str
) -> None:
    _, ref = train()
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupt):
        train(path, KillAt(10))
    damage(path, how)
    assert checkpoint.step(path) == 0  # lockstep groups see a fresh run
    logged = StepLog()
    with caplog.at_level(logging.WARNING):
        model, result = train(path, logged)
    assert not (tmp_path / "code-ran").exists()  # weights_only: the planted call never ran
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]
    assert logged.steps[0] == 0  # from the start
    assert (result.best_val, result.best_step, result.test) == (ref.best_val, ref.best_step,
                                                                ref.test)  # fmt: skip
    assert result.history == ref.history


def test_loading_runs_no_pickled_code_and_names_what_was_refused(tmp_path) -> None:
    model = tiny_model()
    plan = schemes.build(model, FIXED, lr=1e-3)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, LoopState(step=3), model, plan.optimizer)
    assert checkpoint.load(path, model, plan.optimizer).step == 3
    damage(path, "object")
    with pytest.raises(checkpoint.CheckpointError, match="not an allowed global") as err:
        checkpoint.load(path, model, plan.optimizer)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "code-ran").exists()
    torch.load(path, weights_only=False)  # what a pickle loader would have done instead
    assert (tmp_path / "code-ran").exists()


def test_a_checkpoint_is_fsynced_before_and_after_its_rename(tmp_path, monkeypatch) -> None:
    model = tiny_model()
    plan = schemes.build(model, FIXED, lr=1e-3)
    path = tmp_path / "run" / "checkpoint.pt"
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), fsync(fd)))
    checkpoint.save(path, LoopState(step=3), model, plan.optimizer)
    assert synced == [path.stat().st_ino, path.parent.stat().st_ino]  # the file, then its dir
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_a_lockstep_runs_checkpoint_holds_its_own_tensors_only(tmp_path) -> None:
    models = [tiny_model(), tiny_model()]
    with torch.no_grad():
        for p in models[1].parameters():
            p.add_(1.0)
    layout = Stacked(as_runs(models))
    plans = [schemes.build(m, FIXED, lr=1e-3) for m in models]
    for r in (0, 1):
        checkpoint.save(tmp_path / f"{r}.pt", LoopState(step=3), models[r], plans[r].optimizer)
    assert layout.model.output_layer.weight.shape[0] == 2  # the runs' parameters are stacked
    for r in (0, 1):
        saved = torch.load(tmp_path / f"{r}.pt", weights_only=True)["params"]
        for name, param in models[r].named_parameters():
            assert torch.equal(saved[name], param), name
            assert saved[name].untyped_storage().nbytes() == param.numel() * 4, name  # no other run


def test_a_checkpoint_from_a_process_that_saw_several_gpus_resumes_in_a_pinned_worker(
    tmp_path, monkeypatch
) -> None:
    """Saved by a process that saw three cards (every card of the node visible), resumed by a
    worker pinned to one (`CUDA_VISIBLE_DEVICES`): the state of the card the run trained on goes
    to the card the worker sees; restoring every card's state failed at every relaunch."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cards = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]  # fabricated RNG states
    visible, restored = [3], {}

    def set_rng_state(state: torch.Tensor, device: object = "cuda") -> None:
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= visible[0]:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored[index] = state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible[0])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cards)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    checkpoint.save(tmp_path / "c.pt", LoopState(step=4), model, optimizer)
    visible[0] = 1  # the pinned worker sees one card
    assert checkpoint.load(tmp_path / "c.pt", model, optimizer).step == 4
    assert list(restored) == [0] and torch.equal(restored[0], cards[0])

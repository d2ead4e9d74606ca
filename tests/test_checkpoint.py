"""Checkpoints: a fit interrupted after a checkpoint and resumed equals an uninterrupted fit."""

from __future__ import annotations

import pytest
import torch

from test_engine import sign_task, tiny_model
from xmodal_ft import schemes
from xmodal_ft.engine import FitConfig, fit

CFG = FitConfig(
    batch_size=8, max_steps=12, eval_every=4, checkpoint_every=4, log_every=2, progress=False
)


class Interrupt(RuntimeError):
    """Raised by `KillAt` to stop training the way a killed process would."""


class KillAt:
    """A tracker that raises once the loop logs `step` (after the checkpoint at that step)."""

    def __init__(self, step: int):
        self.step = step

    def log(self, values: dict[str, float], step: int) -> None:
        if step >= self.step:
            raise Interrupt(step)

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


def train(checkpoint_path=None, tracker=None):
    torch.manual_seed(0)  # dropout draws from the global generator
    model = tiny_model()
    plan = schemes.build(model, schemes.SchemeConfig(), lr=3e-3)
    return model, fit(model, plan, sign_task(64), CFG, tracker, checkpoint_path)  # 8 steps/epoch


def test_resumed_fit_matches_uninterrupted_fit_exactly(tmp_path) -> None:
    model_ref, ref = train()
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupt):
        train(path, KillAt(10))  # checkpoints at 4 and 8 (epoch 1 starts at 8), killed at 10
    assert torch.load(path, weights_only=False)["loop"]["step"] == 8
    torch.manual_seed(123)  # a new process: the checkpoint restores the RNG state
    model, resumed = train(path)
    assert resumed.best_val == ref.best_val
    assert resumed.test == ref.test
    assert resumed.best_step == ref.best_step
    assert resumed.history == ref.history
    for (name, p), q in zip(model.named_parameters(), model_ref.parameters(), strict=True):
        assert torch.equal(p, q), name

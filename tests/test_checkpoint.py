"""Checkpoints: a fit interrupted after a checkpoint and resumed equals an uninterrupted fit."""

from __future__ import annotations

import pytest
import torch

from conftest import Interrupt, KillAt, sign_task, tiny_model
from xmodal_ft import schemes
from xmodal_ft.engine import FitConfig, fit

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

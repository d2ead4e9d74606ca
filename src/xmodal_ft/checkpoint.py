"""Training checkpoints: everything `engine.fit` needs to continue a run exactly where it stopped.

A checkpoint holds the loop counters and history, the trainable parameters, the optimizer state,
the best-validation copies and the global RNG states (dropout). The data order is not stored: it
is a pure function of (seed, step), replayed by the engine. Files are written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xmodal_ft.atomic import atomic_path


@dataclass
class LoopState:
    """The engine's loop variables at the start of `step`, before that step's evaluation."""

    step: int = 0
    epoch: int = -1
    best_val: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    evals_since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_count: int = 0
    stopped_at: int | None = None  # the step a run stopped early at (lockstep runs go on)


def save(
    path: Path,
    state: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best: dict[str, dict[str, torch.Tensor]],
) -> None:
    """Write a checkpoint to a temporary file beside `path`, then rename it over `path`."""
    payload: dict[str, Any] = {
        "loop": asdict(state),
        "params": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "best": {k: {n: t.cpu() for n, t in v.items()} for k, v in best.items()},
        "rng": torch.random.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def step(path: Path) -> int:
    """The step a checkpoint resumes at (the file is memory-mapped, not read whole)."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)["loop"]["step"]


def load(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    replay_epoch: Callable[[int], None],
) -> tuple[LoopState, dict[str, dict[str, torch.Tensor]]]:
    """Restore model, optimizer and RNGs from `path`; return the loop state and best copies.

    `replay_epoch(e)` is called for each epoch already started, so that epoch hooks (gradual
    unfreezing) put `requires_grad` and the optimizer's groups back as they were.
    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    state = LoopState(**payload["loop"])
    for epoch in range(state.epoch + 1):
        replay_epoch(epoch)
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    best = {k: {n: t.to(device) for n, t in v.items()} for k, v in payload["best"].items()}
    torch.random.set_rng_state(payload["rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return state, best

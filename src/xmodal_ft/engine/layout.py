"""How the runs a loop trains sit in a model: `Single` (one run, its own model) or lockstep's
`Stacked` (R runs in one carrier model: `xmodal_ft.lockstep.stack`, imported by groups only)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import torch
from torch import nn

from xmodal_ft import blocks
from xmodal_ft.engine.run import Run


class Layout(Protocol):
    """The runs training together (`runs`, in the order of the batch's blocks of rows) and
    the model that computes them all (`model`, the runs' batches run-major)."""

    runs: list[Run]
    model: nn.Module

    def clip(self, max_norm: float) -> None:
        """Clip each run's gradients to `max_norm`, as `clip_grad_norm_` clips a lone run's."""

    def step(self) -> None:
        """One optimizer step of each run."""

    def zero_grad(self) -> None: ...

    def without(self, gone: Collection[Run]) -> Layout:
        """The layout of the other runs (`gone` leave: later steps compute only the others)."""

    def twins(self) -> list[int]:
        """For each run, the first run whose weights equal its own (itself at least)."""

    def close(self) -> None: ...


class Single:
    """One run: its own model, torch's gradient clipping, gradients freed after each step. Its
    trainable layers compute in block form (`blocks.to_block_form`), as one block of a stack,
    and its random stream is the global random state."""

    def __init__(self, run: Run):
        self.runs = [run]
        self.model = run.model
        blocks.to_block_form(run.model)
        run.stream.install()

    def clip(self, max_norm: float) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    def step(self) -> None:
        self.runs[0].plan.optimizer.step()

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def without(self, gone: Collection[Run]) -> Single:
        """Itself: a lone run that stops ends the loop."""
        return self

    def twins(self) -> list[int]:
        return [0]

    def close(self) -> None:
        """Nothing to release."""


def layout_of(runs: Sequence[Run]) -> Layout:
    """The layout of `runs`: the run itself for one, else the runs stacked (lockstep)."""
    if len(runs) == 1:
        return Single(runs[0])
    from xmodal_ft.lockstep.stack import Stacked  # groups only: a lone run imports no lockstep

    return Stacked(runs)


def trainable(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]

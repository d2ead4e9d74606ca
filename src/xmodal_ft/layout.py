"""One run's layout: its own model, its trainable layers in block form with one block.

The engine trains a layout: `Single` here, or `lockstep.Stacked` (R runs in one carrier model),
which only a group of runs imports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from xmodal_ft import blocks

RngState = tuple[torch.Tensor, torch.Tensor | None]  # CPU and CUDA generator states


class Single:
    """One run: its own model, torch's gradient clipping, gradients freed after each step.

    Its trainable Linear, Conv1D and Embedding layers are swapped for their block forms with
    one block (`blocks`), once: a model trained again keeps them."""

    runs = 1

    def __init__(self, model: nn.Module):
        self.model = model
        self.models = [model]
        rows = blocks.Rows()
        swapped = blocks.swap(model, lambda name, module: _one_block(module, rows))
        if swapped:
            rows.follow(model)

    def clip(self, max_norm: float) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    def step(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        optimizers[0].step()

    def keep(self, runs: Sequence[int]) -> Single:
        """The run itself (a lone run never leaves a stack)."""
        return self

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def own_rng(self, run: int) -> contextlib.AbstractContextManager:
        """The run's random state is the global one."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Nothing to release."""


def _one_block(module: nn.Module, rows: blocks.Rows) -> nn.Module | None:
    kind = type(module)
    if kind not in blocks.BLOCK_FORMS or kind in blocks.ALONE_AS_IS or not trains(module):
        return None
    return blocks.block_form(module, dict(module._parameters), 1, rows)


def trains(module: nn.Module) -> bool:
    """Whether any of `module`'s own parameters trains."""
    return any(p.requires_grad for p in module._parameters.values() if p is not None)


def rng_state() -> RngState:
    """The global random state (CPU, and CUDA when present)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None

"""The input side of the cross-modal wrapper: the input layer, its init, and a learned [CLS] token.

- Continuous tokens (patches, pixels) → `nn.Linear(token_dim, hidden)`; discrete task tokens
  (ListOps) → `nn.Embedding(vocab_size, hidden)`; text keeps the backbone's own embeddings.
- `init="orthogonal"` is Lu et al.'s input layer (universal-computation `fpt.py`): an orthogonal
  weight scaled by `gain` (their 1.41 ≈ √2) and a zero bias, for Linear input layers; embedding
  tables keep PyTorch's N(0, 1), as in their code. `init="default"` keeps PyTorch's Linear init.
- `PrependToken` puts one learned vector in front of every sequence, so an encoder can pool a
  [CLS]-style token on inputs that have none (pooling="cls").
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from xmodal_ft.tasks.base import TaskSpec

log = logging.getLogger(__name__)
INITS = ("default", "orthogonal")
TOKEN_STD = 0.02  # BERT's initializer_range, for the learned [CLS]-style token


def input_layer(spec: TaskSpec, hidden: int, init: str, gain: float) -> nn.Module | None:
    """The layer mapping task tokens to `hidden`-dim embeddings (None for text tasks)."""
    if init not in INITS:
        raise ValueError(f"unknown model.input_init {init!r}; choose one of: {', '.join(INITS)}")
    if spec.input_kind == "continuous":
        layer = nn.Linear(spec.token_dim, hidden)
        if init == "orthogonal":
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)
        return layer
    if spec.input_kind == "discrete":
        if init == "orthogonal":
            log.info("model.input_init=orthogonal applies to Linear input layers; %s keeps an "
                     "N(0, 1) embedding table, as in Lu et al.'s code", spec.name)  # fmt: skip
        return nn.Embedding(spec.vocab_size, hidden, padding_idx=spec.pad_id)
    if spec.input_kind == "text":
        return None
    raise ValueError(f"unknown input kind {spec.input_kind!r}")


def input_dropout(p: float) -> nn.Module:
    """Dropout on the input embeddings (Lu et al.: 0.1); p = 0 is the identity."""
    if not 0 <= p < 1:
        raise ValueError(f"model.input_dropout={p} must lie in [0, 1) (Lu et al.: 0.1)")
    return nn.Dropout(p) if p > 0 else nn.Identity()


class PrependToken(nn.Module):
    """`layer`, then one learned vector put in front of every sequence (a [CLS]-style token)."""

    def __init__(self, layer: nn.Module, hidden: int):
        super().__init__()
        self.layer = layer
        self.token = nn.Parameter(torch.empty(hidden).normal_(std=TOKEN_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.layer(x)
        token = self.token.to(embeds.dtype).expand(len(embeds), 1, -1)
        return torch.cat([token, embeds], dim=1)

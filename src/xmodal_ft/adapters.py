"""Houlsby adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", 2.1).

A bottleneck (down-projection to hidden/reduction, nonlinearity, up-projection, residual) after
the attention output projection and after the feed-forward output projection of every layer,
i.e. before the sublayer's dropout, residual add and layer norm. The up-projection starts at
zero, so an adapted model computes exactly what the original did until training moves it.
Built here rather than with the `adapters` library, which pins an older transformers.

Adapters attach as a child `adapter` of the projection module plus a forward hook, so every
original parameter keeps its name (pretrained checkpoints and variant patterns still match).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from xmodal_ft.layers import find_layers

log = logging.getLogger(__name__)

_BERT_SITES = ("attention.output.dense", "output.dense")
# model_type → the attention-output and feed-forward-output projections inside one layer.
SITES: dict[str, tuple[str, str]] = {
    "bert": _BERT_SITES,
    "roberta": _BERT_SITES,
    "xlm-roberta": _BERT_SITES,
    "electra": _BERT_SITES,
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
}


class HoulsbyAdapter(nn.Module):
    """x + up(gelu(down(x))) with `up` initialised to zero (an identity map at step 0)."""

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def add_houlsby(model: nn.Module, reduction: int = 16) -> int:
    """Insert adapters into `model.backbone`, freeze all but adapters, norms and the task layers.

    Parameters outside the backbone (input and output layers) and layer norms keep the trainable
    flag the variant gave them; adapters train. Returns the number of adapter parameters.
    """
    backbone = model.backbone
    model_type = backbone.config.model_type
    if model_type not in SITES:
        raise ValueError(
            f"scheme.adapter=houlsby does not support model type {model_type!r}; supported: "
            f"{', '.join(SITES)} (BERT and GPT-2 families), or set scheme.adapter=none"
        )
    hidden = backbone.config.hidden_size
    if not 1 <= reduction <= hidden:
        raise ValueError(f"scheme.reduction={reduction} must lie in 1..{hidden} (hidden size)")
    keep = _norm_and_task_params(model)
    _, stack = find_layers(backbone)
    added = []
    for layer in stack:
        for site in SITES[model_type]:
            added += _attach(layer.get_submodule(site), hidden, hidden // reduction)
    for param in model.parameters():
        param.requires_grad_(param.requires_grad and id(param) in keep)
    for param in added:
        param.requires_grad_(True)
    count = sum(p.numel() for p in added)
    log.info(
        "houlsby adapters: %d of bottleneck %d in %d layers, %s parameters",
        2 * len(stack), hidden // reduction, len(stack), f"{count:,}",
    )  # fmt: skip
    return count


def _norm_and_task_params(model: nn.Module) -> set[int]:
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    keep = {id(p) for p in model.parameters() if id(p) not in backbone_ids}
    for module in model.backbone.modules():
        if isinstance(module, nn.LayerNorm):
            keep.update(id(p) for p in module.parameters())
    return keep


def _attach(projection: nn.Module, hidden: int, bottleneck: int) -> list[nn.Parameter]:
    if hasattr(projection, "adapter"):
        raise ValueError("this model already has adapters: build the plan once per model")
    weight = next(projection.parameters())
    projection.adapter = HoulsbyAdapter(hidden, bottleneck).to(weight.device, weight.dtype)
    projection.register_forward_hook(_run_adapter)
    return list(projection.adapter.parameters())


def _run_adapter(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return module.adapter(output)

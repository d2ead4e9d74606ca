"""Attention of a stack with each run's attention-dropout masks: transformers' SDPA attention,
and with dropout SDPA's math path written out, each run's rows dropped by its lone run's masks.

`use(model, draws)` gives the carrier's transformers models this attention (their public
`set_attn_implementation`, the function registered with transformers' `AttentionInterface`)
and hands them the stack's draws as an attention keyword argument, which transformers passes
through its layers to the attention function.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from xmodal_ft.lockstep.draws import RunDraws

ATTENTION = "lockstep_sdpa"  # SDPA with per-run attention-dropout masks
DRAWS = "run_draws"  # the attention keyword argument that carries a stack's draws


def use(model: nn.Module, draws: RunDraws) -> None:
    """`model`'s transformers models on SDPA attention take lockstep's, with `draws`."""
    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)

    def hand_draws(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, DRAWS: draws}

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.config._attn_implementation == "sdpa":
            module.set_attn_implementation(ATTENTION)
            module.register_forward_pre_hook(hand_draws, with_kwargs=True)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    run_draws: RunDraws | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Transformers' SDPA attention; with attention dropout, the math path torch takes on CPU
    (`_scaled_dot_product_attention_math`, op for op, so a lone run's bits) with each run's rows
    dropped by the mask its lone run draws (`at::dropout` on the probabilities). Grouped
    key/value heads (`num_key_value_groups`) are repeated as that path repeats them."""
    if dropout == 0.0 or run_draws is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=is_causal, **kwargs,
        )  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    root = math.sqrt(scaling if scaling is not None else 1 / math.sqrt(query.shape[-1]))
    scores = (query * root) @ (key.transpose(-2, -1) * root)  # q and k scaled, as torch does
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        attention_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # as torch converts it: 0 kept, -inf dropped
            attention_mask = torch.where(attention_mask, 0.0, float("-inf")).to(scores.dtype)
        scores.add_(attention_mask)
    probs = safe_softmax(scores)
    probs = probs * run_draws.keep_masks(probs, 1 - dropout, (2, 3)).div_(1 - dropout)
    return (probs @ value).transpose(1, 2).contiguous(), None


def safe_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim as SDPA's math path takes it: torch's private
    `aten._safe_softmax` (zeros, not NaN, for a row that masks every key) where torch has it,
    else the public softmax (which older torch's math path called)."""
    safe = getattr(torch.ops.aten, "_safe_softmax", None)
    return torch.softmax(scores, -1) if safe is None else safe(scores, -1)

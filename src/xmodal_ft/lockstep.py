"""Run layouts: one run's model as is, or R runs of one configuration stacked into one model.

`stack(models)` turns R run models (each built from its own seed, exactly as a sequential run
builds it) into one carrier model whose batch is the runs' batches, run-major: rows
[r·B, (r+1)·B) belong to run r. Leaf modules whose parameters differ between runs (trainable
ones always; frozen ones when the runs' values differ, e.g. random backbones of different seeds)
compute with tensors stacked on a leading block axis: Linear and GPT-2's Conv1D as a batched
matmul over a (K, rows/K, features) view, LayerNorm with per-block scale and shift, Embedding with
per-block tables. Frozen modules equal in every run stay single and take all R·B rows as one
batch (the pretrained backbone under FPT); attention has no parameters and runs unchanged.

Each run model's parameters become views of the stacked tensors, and its trainable parameters'
`.grad` views of the stacked gradients, so every run keeps its own optimizer (its own LR and
Adam state), checkpoint and best-weights copies, all built on its own model as a lone run would.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D


class LockstepError(ValueError):
    """A configuration that cannot train in lockstep; the message names the way out."""


DEFAULT_LAUNCHER = "run it with the default launcher (drop hydra/launcher=lockstep)"


class Single:
    """One run: its own model, torch's gradient clipping, gradients freed after each step."""

    runs = 1

    def __init__(self, model: nn.Module):
        self.model = model
        self.models = [model]

    def clip(self, max_norm: float) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)


class Stacked:
    """R run models trained as one carrier model (see the module docstring)."""

    def __init__(self, models: Sequence[nn.Module]):
        self.models = list(models)
        self.runs = len(models)
        self.rows = 0  # rows of the carrier's current batch (R · per-run rows)
        self.grads: list[torch.Tensor] = []
        shared = {id(t): t for m in models[:1] for t in [*m.parameters(), *m.buffers()]}
        self.model = copy.deepcopy(models[0], memo=dict(shared))  # modules copied, tensors shared
        self.model.register_forward_pre_hook(self._count_rows)
        run_modules = [dict(m.named_modules()) for m in models]
        for name, module in self.model.named_modules():
            names = list(module._parameters)
            if not names:
                continue
            values = [[getattr(rm[name], n) for rm in run_modules] for n in names]
            blocks = _blocks(values)
            if blocks > 1 and type(module) not in FORWARDS:
                raise LockstepError(
                    f"lockstep cannot stack {type(module).__name__} ({name}): {DEFAULT_LAUNCHER}"
                )
            for param_name, per_run in zip(names, values, strict=True):
                setattr(module, param_name, self._stack(per_run, blocks))
            if blocks > 1:
                module.blocks = blocks
                module.layout = self
                module.forward = types.MethodType(FORWARDS[type(module)], module)

    def _stack(self, per_run: list[nn.Parameter], blocks: int) -> nn.Parameter:
        """One parameter of `blocks` blocks; each run's parameter becomes a view of its block."""
        first = per_run[0]
        if blocks == 1:
            for param in per_run[1:]:
                param.data = first.data
            return first
        size = self.runs // blocks
        stacked = torch.stack([per_run[b * size].detach() for b in range(blocks)])
        param = nn.Parameter(stacked, requires_grad=first.requires_grad)
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
            self.grads.append(param.grad)
        for run, value in enumerate(per_run):
            value.data = param.data[run // size]
            if param.requires_grad:
                value.grad = param.grad[run // size]
        return param

    def _count_rows(self, module: nn.Module, args: tuple) -> None:
        self.rows = args[0].shape[0]

    @torch.no_grad()
    def clip(self, max_norm: float) -> None:
        """`clip_grad_norm_` per run: each run's norm is over its own slices of the gradients."""
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in self.grads])
        total = torch.linalg.vector_norm(norms, dim=0)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for grad in self.grads:
            grad.mul_(coef.view(-1, *[1] * (grad.dim() - 1)))

    def zero_grad(self) -> None:
        torch._foreach_zero_(self.grads)


Layout = Single | Stacked


def build(models: Sequence[nn.Module]) -> Layout:
    """The layout of `models`: the model itself for one run, else the runs stacked."""
    return Single(models[0]) if len(models) == 1 else Stacked(models)


@torch.no_grad()
def share_frozen(model: nn.Module, seen: Sequence[nn.Module]) -> None:
    """Make `model`'s frozen parameters views of equal ones in `seen` models (frees the copies).

    Called as each run's model is built, so R pretrained backbones never sit in memory at once.
    """
    for other in seen:
        mine, theirs = dict(model.named_parameters()), dict(other.named_parameters())
        for name, param in mine.items():
            ref = theirs.get(name)
            if (
                not param.requires_grad
                and ref is not None
                and param.data_ptr() != ref.data_ptr()
                and param.shape == ref.shape
                and torch.equal(param, ref)
            ):
                param.data = ref.data


def _blocks(values: list[list[nn.Parameter]]) -> int:
    """How many distinct blocks a module's parameters need: 1 when frozen and equal in every
    run; the number of distinct frozen values when runs with equal values are contiguous and
    equally many; else one per run."""
    runs = len(values[0])
    if any(per_run[0].requires_grad for per_run in values):
        return runs
    labels: list[int] = []
    firsts: list[int] = []  # the first run of each distinct value
    for run in range(runs):
        match = next((i for i, f in enumerate(firsts) if _all_equal(values, run, f)), None)
        if match is None:
            firsts.append(run)
        labels.append(len(firsts) - 1 if match is None else match)
    size = runs // len(firsts)
    contiguous = labels == [b for b in range(len(firsts)) for _ in range(size)]
    return len(firsts) if contiguous else runs


def _all_equal(values: list[list[nn.Parameter]], run: int, other: int) -> bool:
    return all(
        p[run].data_ptr() == p[other].data_ptr() or torch.equal(p[run], p[other]) for p in values
    )


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight[k] + bias[k] for each block k of x's rows; weight is (K, in, out)."""
    shape = x.shape
    blocks = weight.shape[0]
    x = x.reshape(blocks, -1, shape[-1])
    out = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
    return out.reshape(*shape[:-1], weight.shape[-1])


def _linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _matmul(x, self.weight.transpose(1, 2), self.bias)


def _conv1d(self: Conv1D, x: torch.Tensor) -> torch.Tensor:
    return _matmul(x, self.weight, self.bias)


def _layer_norm(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    normed = F.layer_norm(x, self.normalized_shape, eps=self.eps)
    normed = normed.reshape(self.blocks, -1, shape[-1])
    if self.weight is not None:
        normed = normed * self.weight.unsqueeze(1)
    if self.bias is not None:
        normed = normed + self.bias.unsqueeze(1)
    return normed.reshape(shape)


def _embedding(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Per-block lookups; ids of one row (positions) broadcast over every run's rows."""
    blocks, vocab, hidden = self.weight.shape
    if ids.shape[0] == 1:
        rows = self.layout.rows
        out = self.weight[:, ids[0]].unsqueeze(1).expand(blocks, rows // blocks, *ids.shape[1:], -1)
        out = out.reshape(rows, *ids.shape[1:], hidden)
    else:
        offsets = torch.arange(blocks, device=ids.device) * vocab
        shifted = (ids.reshape(blocks, -1) + offsets.unsqueeze(1)).reshape(ids.shape)
        out = F.embedding(shifted, self.weight.reshape(blocks * vocab, hidden))
    if self.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
        out = out.masked_fill((ids == self.padding_idx).unsqueeze(-1), 0.0)
    return out


FORWARDS: dict[type, Callable[..., torch.Tensor]] = {
    nn.Linear: _linear,
    Conv1D: _conv1d,
    nn.LayerNorm: _layer_norm,
    nn.Embedding: _embedding,
}

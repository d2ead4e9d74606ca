"""Layers in block form: a batch's rows in K equal blocks, block k computed with weights k.

A lockstep carrier's batch is R runs' batches, run-major; its stacked layers hold the runs'
weights on a leading block axis (K = R for trainable layers; fewer for frozen ones equal within
blocks of runs) and give block k's rows block k's weights. `swap` puts them in a model in place
of torch's (and GPT-2's) layers, the way parameter-efficient fine-tuning libraries replace
modules, so `print(model)` shows them. Each keeps its original's class as a base, its
hyper-parameters and its parameter names (checkpoints and optimizers see the same names).

A lone run's trainable Linear, Conv1D and Embedding layers compute in block form too (K = 1), so
each block of a stack runs the very kernels of its lone run (a batched matmul over K blocks gives
each block the bits it gives alone, where `addmm` vs `bmm` can differ in the last bit, and such
bits grow into different runs over a few hundred steps at a high LR). LayerNorm's block form
calls torch's own kernel per block, so a lone run keeps torch's module (`ONE_BLOCK_IS_TORCH`).
Frozen layers keep torch's forward: their rows do not depend on the batch around them.

A block form is a module of its own (`BlockForm`), not a subclass of the layer it replaces: its
weights are (K, ...) where the layer's are not. Hooks registered on a layer cannot follow it to
its block form (torch has no public way to move them), so `swap` refuses a layer with hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from xmodal_ft.inputs import PrependToken

Params = dict[str, nn.Parameter | None]


class BatchRows:
    """The row count of the batch a model runs now, for layers that broadcast one row of ids
    (positions) to every block's rows; `track(model)` keeps it up to date."""

    def __init__(self) -> None:
        self.count = 0

    def track(self, model: nn.Module) -> None:
        """Set the count from each batch `model` runs (its first argument's rows)."""
        model.register_forward_pre_hook(self._enter)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.count = args[0].shape[0]


def swap(model: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None]) -> list[str]:
    """Put `replace(name, module)` in `model` in place of each submodule it returns a module for,
    parents before children (a replacement that keeps its original's children has them visited
    too), in the original's train/eval mode; return the names replaced. A module with hooks is
    not replaced: `HookedModule` is raised (its hooks would not run on its replacement)."""
    swapped = []
    for name in [n for n, _ in model.named_modules() if n]:
        try:
            module = model.get_submodule(name)
        except AttributeError:  # under a replacement that does not keep it
            continue
        new = replace(name, module)
        if new is not None:
            if has_hooks(module):
                raise HookedModule(f"{name} ({type(module).__name__}) has hooks registered")
            new.train(module.training)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
            swapped.append(name)
    return swapped


class HookedModule(ValueError):
    """A module with hooks cannot be swapped: they would not run on its replacement."""


_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def has_hooks(module: nn.Module) -> bool:
    """Whether hooks are registered on `module` itself. Torch keeps them in private dicts and
    has no public way to list them; an attribute it renamed raises here (AttributeError), and
    tests/test_blocks.py registers each kind of hook and checks that this sees it."""
    return any(getattr(module, name) for name in _HOOKS)


def to_block_form(model: nn.Module) -> nn.Module:
    """`model` (a lone run's) with its trainable Linear, Conv1D and Embedding layers (and
    [CLS] token) in block form with one block, in place; a model in block form already (trained
    before) is left as it is, and so is a layer with hooks. Return the model."""
    rows = BatchRows()

    def one_block(name: str, module: nn.Module) -> nn.Module | None:
        kind = type(module)  # torch's layers only: a block form is one already
        if kind not in BLOCK_FORMS or kind in ONE_BLOCK_IS_TORCH or not has_block_form(module):
            return None
        if not trains(module):
            return None
        if has_hooks(module):  # its hooks go on running on torch's module (a lone run only)
            return None
        return block_form(module, dict(module.named_parameters(recurse=False)), 1, rows)

    if swap(model, one_block):
        rows.track(model)
    return model


def trains(module: nn.Module) -> bool:
    """Whether any of `module`'s own parameters trains."""
    return any(p.requires_grad for p in module.parameters(recurse=False))


def block_form(module: nn.Module, params: Params, blocks: int, rows: BatchRows) -> nn.Module:
    """`module` in block form with `blocks` blocks and parameters `params` (by name); `module`
    may be in block form already (a lone run's, stacked again when runs leave a stack)."""
    kind = type(module)
    return (kind if kind in FORMS else BLOCK_FORMS[kind])(module, params, blocks, rows)


def has_block_form(module: nn.Module) -> bool:
    """Whether `module` has a block form (or is one): an embedding with options of
    `F.embedding` beyond `padding_idx` (max_norm, ...) has none."""
    kind = type(module)
    if kind is nn.Embedding and any(
        getattr(module, key) for key in ("max_norm", "scale_grad_by_freq", "sparse")
    ):
        return False
    return kind in BLOCK_FORMS or kind in FORMS


def _with_blocks(tensor: torch.Tensor | None, blocks: int) -> torch.Tensor | None:
    """`tensor` with its leading block axis (added for K = 1, whose weights are not stacked)."""
    return tensor if tensor is None or blocks > 1 else tensor.unsqueeze(0)


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight[k] + bias[k] for each block k of x's rows; weight is (K, in, out)."""
    shape = x.shape
    blocks = weight.shape[0]
    x = x.reshape(blocks, -1, shape[-1])
    out = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
    return out.reshape(*shape[:-1], weight.shape[-1])


class BlockForm(nn.Module):
    """A layer in block form with `blocks` blocks (see the module docstring); its parameters
    keep the names of the layer it replaces."""

    def __init__(self, blocks: int, params: Params) -> None:
        super().__init__()
        self.blocks = blocks
        for name, param in params.items():
            self.register_parameter(name, param)

    def _param(self, name: str) -> torch.Tensor | None:
        """Parameter `name` with its leading block axis (added for K = 1: not stacked)."""
        return _with_blocks(getattr(self, name), self.blocks)


class BlockLinear(BlockForm):
    """`nn.Linear` in block form: weight (K, out, in) and bias (K, out), or unstacked for K = 1."""

    def __init__(self, linear: nn.Module, params: Params, blocks: int, rows: BatchRows) -> None:
        super().__init__(blocks, {"weight": params["weight"], "bias": params.get("bias")})
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _matmul(x, self._param("weight").transpose(1, 2), self._param("bias"))

    def extra_repr(self) -> str:
        return (f"blocks={self.blocks}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")  # fmt: skip


class BlockConv1D(BlockForm):
    """GPT-2's `Conv1D` in block form: weight (K, in, out) and bias (K, out)."""

    def __init__(self, conv: nn.Module, params: Params, blocks: int, rows: BatchRows) -> None:
        super().__init__(blocks, {"weight": params["weight"], "bias": params.get("bias")})
        self.nf, self.nx = conv.nf, conv.nx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _matmul(x, self._param("weight"), self._param("bias"))

    def __repr__(self) -> str:
        return f"BlockConv1D(blocks={self.blocks}, nf={self.nf}, nx={self.nx})"


class BlockLayerNorm(BlockForm):
    """`nn.LayerNorm` in block form: each block's rows through `F.layer_norm` with the block's
    scale and shift, torch's fused kernel as its lone run calls it (an affine map after the
    normalisation would round apart, and its backward would sum the scale's gradient in another
    order)."""

    def __init__(self, norm: nn.Module, params: Params, blocks: int, rows: BatchRows) -> None:
        super().__init__(blocks, {"weight": params.get("weight"), "bias": params.get("bias")})
        self.normalized_shape, self.eps = norm.normalized_shape, norm.eps
        self.elementwise_affine = norm.elementwise_affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = [None] * self.blocks if self.weight is None else self.weight.unbind(0)
        biases = [None] * self.blocks if self.bias is None else self.bias.unbind(0)
        parts = x.reshape(self.blocks, -1, *x.shape[1:]).unbind(0)
        return torch.cat(
            [
                F.layer_norm(part, self.normalized_shape, weight, bias, self.eps)
                for part, weight, bias in zip(parts, weights, biases, strict=True)
            ]
        )

    def extra_repr(self) -> str:
        return (f"blocks={self.blocks}, {self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")  # fmt: skip


class BlockEmbedding(BlockForm):
    """`nn.Embedding` in block form: table (K, vocab, hidden); ids of one row (positions)
    broadcast over every block's rows (`rows`: the batch's)."""

    def __init__(self, embedding: nn.Module, params: Params, blocks: int, rows: BatchRows) -> None:
        super().__init__(blocks, {"weight": params["weight"]})
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx, self.rows = embedding.padding_idx, rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self._param("weight")
        blocks, vocab, hidden = weight.shape
        if ids.shape[0] == 1:
            rows = self.rows.count
            out = weight[:, ids[0]].unsqueeze(1).expand(blocks, rows // blocks, *ids.shape[1:], -1)
            out = out.reshape(rows, *ids.shape[1:], hidden)
        else:
            offsets = torch.arange(blocks, device=ids.device) * vocab
            shifted = (ids.reshape(blocks, -1) + offsets.unsqueeze(1)).reshape(ids.shape)
            out = F.embedding(shifted, weight.reshape(blocks * vocab, hidden))
        if self.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            out = out.masked_fill((ids == self.padding_idx).unsqueeze(-1), 0.0)
        return out

    def extra_repr(self) -> str:
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"blocks={self.blocks}, {self.num_embeddings}, {self.embedding_dim}{padding}"


class BlockPrependToken(BlockForm):
    """`PrependToken` in block form: each block's own learned token (K, hidden) in front of its
    rows' sequences."""

    def __init__(self, prepend: nn.Module, params: Params, blocks: int, rows: BatchRows) -> None:
        super().__init__(blocks, {"token": params["token"]})
        self.layer = prepend.layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.layer(x)
        rows, length, hidden = embeds.shape
        token = self._param("token").to(embeds.dtype)[:, None, None, :]
        token = token.expand(self.blocks, rows // self.blocks, 1, hidden).reshape(rows, 1, hidden)
        return torch.cat([token, embeds], dim=1)

    def extra_repr(self) -> str:
        return f"blocks={self.blocks}"


class Draws(Protocol):
    def keep_masks(
        self, x: torch.Tensor, keep: float, sequence_dims: tuple[int, ...] = ()
    ) -> torch.Tensor: ...


class RunDropout(nn.Dropout):
    """`nn.Dropout` whose masks are each run's own: run r's rows dropped with the mask its lone
    run draws (`draws.keep_masks`)."""

    def __init__(self, dropout: nn.Dropout, draws: Draws, runs: int) -> None:
        super().__init__(dropout.p, dropout.inplace)
        self.draws, self.runs = draws, runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        sequence = (1,) if x.dim() == 3 else ()  # (rows, sequence, features) or (rows, features)
        return x * self.draws.keep_masks(x, 1 - self.p, sequence).div_(1 - self.p)

    def extra_repr(self) -> str:
        return f"runs={self.runs}, {super().extra_repr()}"


class FrozenBlocks(nn.Module):
    """A frozen module whose weights differ per block of runs (random backbones of several
    seeds): each block's rows through that block's module, as its lone runs compute them."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        parts = x.reshape(len(self.parts), -1, *x.shape[1:]).unbind(0)
        return torch.cat([m(part, *args) for m, part in zip(self.parts, parts, strict=True)])


BLOCK_FORMS: dict[type, type[nn.Module]] = {
    nn.Linear: BlockLinear,
    Conv1D: BlockConv1D,
    nn.LayerNorm: BlockLayerNorm,
    nn.Embedding: BlockEmbedding,
    PrependToken: BlockPrependToken,
}
FORMS = frozenset(BLOCK_FORMS.values())
# Layers whose block form computes one block exactly as torch's module: a lone run keeps torch's.
ONE_BLOCK_IS_TORCH = (nn.LayerNorm,)

"""Layers in block form against torch's: block k of a stack computes module k's numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.pytorch_utils import Conv1D

from conftest import as_runs, tiny_model
from xmodal_ft import blocks
from xmodal_ft.engine.run import RandomStream
from xmodal_ft.inputs import PrependToken
from xmodal_ft.lockstep import attention
from xmodal_ft.lockstep.stack import Stacked

K, B = 3, 4  # blocks, rows per block


def make(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(5, 6)
    if kind == "conv1d":
        return Conv1D(6, 5)
    if kind == "layer_norm":
        norm = nn.LayerNorm(5)
        nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
        return norm
    if kind == "embedding":
        return nn.Embedding(7, 5, padding_idx=0)
    return PrependToken(nn.Identity(), 5)


def inputs(kind: str, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "embedding":
        return torch.randint(0, 7, (rows, 6), generator=g)
    return torch.randn(rows, 6, 5, generator=g)


def stacked(modules: list[nn.Module], rows: blocks.BatchRows) -> nn.Module:
    names = [n for n, p in modules[0].named_parameters(recurse=False)]
    params = {
        n: nn.Parameter(torch.stack([getattr(m, n).detach() for m in modules])) for n in names
    }
    return blocks.block_form(modules[0], params, len(modules), rows)


@pytest.mark.parametrize("kind", ["linear", "conv1d", "layer_norm", "embedding", "prepend"])
def test_each_block_computes_its_modules_forward_and_gradients(kind: str) -> None:
    """Block k equals torch's module k (to rounding) and, bit for bit, module k in block form
    with one block (a lone run's layer); the weights' gradients equal those to rounding (a
    batched matmul's weight gradient can round one block apart at these small shapes)."""
    modules = [make(kind, seed) for seed in range(K)]
    rows = blocks.BatchRows()
    stack = stacked(modules, rows)
    x = inputs(kind, K * B)
    rows.count = K * B
    out = stack(x)
    out.square().sum().backward()
    for k, (module, part) in enumerate(zip(modules, x.split(B), strict=True)):
        torch.testing.assert_close(out[k * B : (k + 1) * B], module(part), rtol=1e-6, atol=1e-6)
        alone = blocks.block_form(module, dict(module.named_parameters(recurse=False)), 1, rows)
        rows.count = B
        own = alone(part) if kind != "layer_norm" else module(part)
        assert torch.equal(out[k * B : (k + 1) * B], own)
        own.square().sum().backward()
        for name, param in module.named_parameters(recurse=False):
            torch.testing.assert_close(getattr(stack, name).grad[k], param.grad, msg=name)
    assert isinstance(stack, blocks.BlockForm) and f"blocks={K}" in repr(stack)
    assert not isinstance(stack, type(modules[0]))  # (K, ...) weights: not the layer's shapes


def test_position_ids_of_one_row_broadcast_to_every_blocks_rows() -> None:
    modules = [nn.Embedding(8, 5) for _ in range(K)]
    rows = blocks.BatchRows()
    stack = stacked(modules, rows)
    rows.count = K * B
    out = stack(torch.arange(6).unsqueeze(0))
    assert out.shape == (K * B, 6, 5)
    for k, module in enumerate(modules):
        expected = module(torch.arange(6)).expand(B, 6, 5)
        assert torch.equal(out[k * B : (k + 1) * B], expected)


class Ones:
    def keep_masks(self, x: torch.Tensor, keep: float, sequence_dims: tuple = ()) -> torch.Tensor:
        return torch.ones_like(x).index_fill_(0, torch.tensor([0]), 0.0)


def test_run_dropout_takes_its_masks_from_the_runs_draws() -> None:
    dropout = blocks.RunDropout(nn.Dropout(0.5), Ones(), runs=2)
    x = torch.ones(4, 3, 2)
    out = dropout(x)
    assert torch.equal(out[0], torch.zeros(3, 2)) and torch.equal(out[1:], 2 * x[1:])
    assert torch.equal(dropout.eval()(x), x)
    assert "runs=2, p=0.5" in repr(dropout)


def test_frozen_blocks_run_each_blocks_rows_through_its_module() -> None:
    modules = [make("linear", seed) for seed in range(K)]
    frozen = blocks.FrozenBlocks(modules)
    x = inputs("linear", K * B)
    for k, (module, part) in enumerate(zip(modules, x.split(B), strict=True)):
        assert torch.equal(frozen(x)[k * B : (k + 1) * B], module(part))


def test_swap_replaces_modules_in_place_children_included() -> None:
    model = nn.Sequential(PrependToken(nn.Linear(5, 5), 5), nn.Linear(5, 2))
    rows = blocks.BatchRows()

    def one_block(name: str, module: nn.Module) -> nn.Module | None:
        if type(module) not in blocks.BLOCK_FORMS:
            return None
        return blocks.block_form(module, dict(module.named_parameters(recurse=False)), 1, rows)

    names = dict(model.named_parameters())
    assert blocks.swap(model, one_block) == ["0", "0.layer", "1"]
    assert [type(m) for m in (model[0], model[0].layer, model[1])] == [
        blocks.BlockPrependToken, blocks.BlockLinear, blocks.BlockLinear]  # fmt: skip
    assert dict(model.named_parameters()) == names  # the same parameters, by the same names


@pytest.mark.parametrize("kind", ["forward_pre", "forward", "full_backward_pre", "full_backward"])
def test_a_layer_with_hooks_is_not_swapped(kind: str) -> None:
    """Its hooks could not follow it: swapping refuses it, a lone run keeps torch's layer (its
    hooks run), and a stack refuses to train it (tests/test_lockstep.py)."""
    model = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 2))
    seen = []
    getattr(model[1], f"register_{kind}_hook")(lambda *args: seen.append(kind))
    assert blocks.has_hooks(model[1]) and not blocks.has_hooks(model[0])
    with pytest.raises(blocks.HookedModule, match="1 \\(Linear\\) has hooks"):
        blocks.swap(model, lambda name, module: nn.Identity() if name == "1" else None)
    blocks.to_block_form(model)
    assert type(model[0]) is blocks.BlockLinear and type(model[1]) is nn.Linear
    model(torch.ones(2, 5, requires_grad=True)).sum().backward()
    assert seen


def test_a_lone_run_swaps_its_trainable_layers_once() -> None:
    model = tiny_model()
    blocks.to_block_form(model)
    blocks.to_block_form(model)  # trained again: nothing more to swap, no second hook
    assert isinstance(model.input_layer, blocks.BlockLinear)
    assert type(model.backbone.h[0].ln_1) is nn.LayerNorm  # as is alone
    assert len(model._forward_pre_hooks) == 1


class Attention(nn.Module):
    is_causal = False
    num_key_value_groups = 2  # 4 query heads share 2 key/value heads


def test_attention_dropout_draws_each_runs_masks_as_its_lone_run_with_grouped_heads() -> None:
    """Lockstep's attention with dropout (SDPA's math path written out, probabilities through
    the private `_safe_softmax`) equals transformers' SDPA attention of each run alone, under
    the run's own random state, bit for bit."""
    runs, states = 2, [torch.Generator().manual_seed(s).get_state() for s in (3, 4)]
    members = as_runs([tiny_model() for _ in range(runs)])
    for member, state in zip(members, states, strict=True):
        member.stream = RandomStream((state, None))  # run r's stream: seeds 3 and 4
    layout = Stacked(members)
    g = torch.Generator().manual_seed(0)
    query = torch.randn(runs * B, 4, 6, 8, generator=g)
    key, value = (torch.randn(runs * B, 2, 6, 8, generator=g) for _ in range(2))
    mask = torch.ones(runs * B, 1, 6, 6, dtype=torch.bool).tril()
    out, _ = attention.attention(
        Attention(), query, key, value, mask, dropout=0.3, run_draws=layout.draws
    )
    for r, state in enumerate(states):
        rows = slice(r * B, (r + 1) * B)
        with torch.random.fork_rng():
            torch.set_rng_state(state)
            alone, _ = sdpa_attention_forward(
                Attention(), query[rows], key[rows], value[rows], mask[rows], dropout=0.3
            )
        assert torch.equal(out[rows], alone), r


def test_safe_softmax_gives_zeros_for_a_row_that_masks_every_key() -> None:
    scores = torch.tensor([[0.0, 1.0], [float("-inf"), float("-inf")]])
    probs = attention.safe_softmax(scores)
    assert torch.equal(probs[0], torch.softmax(scores[0], -1))
    assert torch.equal(probs[1], torch.zeros(2))

"""The input side: Lu et al.'s orthogonal input layer and input dropout, and the learned [CLS]."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import SIGN, make_cfg, read_results, tiny_model, trainable_names
from xmodal_ft import models, run, variants
from xmodal_ft.tasks.base import TaskSpec

DISCRETE = TaskSpec("toy", num_classes=3, input_kind="discrete", seq_len=12, vocab_size=7)
TEXT = TaskSpec("text", num_classes=2, input_kind="text", seq_len=16, vocab_size=99)


def test_orthogonal_input_layer_has_gain_scaled_orthonormal_columns_and_zero_bias() -> None:
    layer = tiny_model("tiny_gpt2", input_init="orthogonal").input_layer  # Linear(3 → 32)
    gram = layer.weight.T @ layer.weight
    torch.testing.assert_close(gram, 1.41**2 * torch.eye(3), rtol=0, atol=1e-5)
    assert layer.bias.tolist() == [0.0] * 32


def test_default_input_layer_is_pytorchs_linear_init() -> None:
    layer = tiny_model("tiny_gpt2").input_layer
    bound = 1 / math.sqrt(SIGN.token_dim)  # kaiming-uniform(√5) bound of nn.Linear
    assert layer.bias.abs().max() <= bound and layer.bias.abs().min() > 0
    assert not torch.allclose(layer.weight.T @ layer.weight, 1.41**2 * torch.eye(3), atol=0.1)


def test_gain_is_a_config_key() -> None:
    layer = tiny_model("tiny_gpt2", input_init="orthogonal", input_gain=0.5).input_layer
    torch.testing.assert_close(
        layer.weight.T @ layer.weight, 0.25 * torch.eye(3), atol=1e-5, rtol=0
    )


def test_orthogonal_init_leaves_embedding_tables_as_lu_et_al() -> None:
    default = tiny_model("tiny_gpt2", DISCRETE).input_layer.weight
    orthogonal = tiny_model("tiny_gpt2", DISCRETE, input_init="orthogonal").input_layer.weight
    assert torch.equal(default, orthogonal)


def embeddings_fed_to_backbone(model: models.CrossModalModel, x: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = model.backbone.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    model(x)
    hook.remove()
    return seen[0]


def test_input_dropout_zeroes_and_rescales_embeddings_in_training_only() -> None:
    model = tiny_model("tiny_gpt2", input_dropout=0.5)
    x = torch.randn(64, SIGN.seq_len, SIGN.token_dim)
    clean = model.input_layer(x).detach()
    dropped = embeddings_fed_to_backbone(model.train(), x)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * clean[kept])  # 1 / (1 - p)
    assert 0.45 < kept.float().mean() < 0.55
    assert torch.equal(embeddings_fed_to_backbone(model.eval(), x), clean)


def test_zero_input_dropout_is_no_module_and_keeps_todays_model() -> None:
    model = tiny_model("tiny_gpt2")
    assert isinstance(model.input_dropout, torch.nn.Identity)
    x = torch.randn(4, SIGN.seq_len, SIGN.token_dim)
    torch.testing.assert_close(embeddings_fed_to_backbone(model.train(), x), model.input_layer(x))


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_input_dropout_names_the_key(p: float) -> None:
    with pytest.raises(ValueError, match="model.input_dropout"):
        tiny_model("tiny_gpt2", input_dropout=p)


def test_unknown_input_init_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="model.input_init 'xavier'; choose one of: default"):
        tiny_model("tiny_gpt2", input_init="xavier")


# ---- a learned [CLS]-style token for encoders on non-text inputs ------------------------------


def test_cls_pooling_reads_a_learned_token_prepended_to_the_inputs() -> None:
    model = tiny_model("tiny_bert", pooling="cls").eval()
    x = torch.randn(2, SIGN.seq_len, SIGN.token_dim)
    token = model.input_layer.token
    assert token.shape == (32,)
    embeds = torch.cat([token.expand(2, 1, 32), model.input_layer.layer(x)], dim=1)
    hidden = model.backbone(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(model(x), model.output_layer(hidden[:, 0]))


def test_cls_token_ignores_right_padding() -> None:
    model = tiny_model("tiny_bert", DISCRETE, pooling="cls").eval()
    x = torch.randint(1, 7, (2, 6))
    padded = torch.cat([x, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    out = model(padded, torch.tensor([6, 6]))
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


def test_cls_token_trains_under_fpt_in_the_bottom_layer_group(tiny_bert_dir) -> None:
    cfg = make_cfg("model=tiny_bert", "model.pooling=cls", f"model.path={tiny_bert_dir}")
    model = models.build(models.ModelConfig(**cfg.model), SIGN, pretrained=True, seed=0)
    variants.apply(model, variants.VariantConfig(**cfg.variant))
    assert {"input_layer.token", "input_layer.layer.weight"} <= trainable_names(model)


def test_cls_on_text_is_the_tokenizers_first_token() -> None:
    first, cls = tiny_model("tiny_bert", TEXT), tiny_model("tiny_bert", TEXT, pooling="cls")
    x = torch.randint(5, 99, (3, 10))
    assert torch.equal(first.eval()(x), cls.eval()(x))


def test_cls_on_a_causal_model_names_the_fix() -> None:
    with pytest.raises(ValueError, match="model.pooling=last"):
        tiny_model("tiny_gpt2", pooling="cls")


def test_cls_token_counts_against_the_positions() -> None:
    spec = TaskSpec("long", num_classes=2, input_kind="continuous", seq_len=2048, token_dim=1)
    with pytest.raises(ValueError, match="2048 tokens plus 1 \\[CLS\\] token.*task.max_len=2047"):
        tiny_model("tiny_bert", spec, pooling="cls")


def test_bert_pools_a_learned_cls_on_non_text_tasks() -> None:
    assert make_cfg("model=bert").model.pooling == "cls"


def test_lu_input_layer_runs_end_to_end(tmp_path) -> None:
    cfg = make_cfg(
        "model=tiny_bert", "model.pooling=cls", "model.input_init=orthogonal",
        "model.input_dropout=0.1", "variant=frozen_random",
    )  # fmt: skip
    val = run(cfg, run_dir=tmp_path)
    results = read_results(tmp_path)
    assert results["val/acc"] == val
    # input 4·32 + 32, [CLS] 32, output 32·10 + 10, positions 2048·32, 5 norms of 2·32.
    assert results["params"]["trainable"] == 160 + 32 + 330 + 65536 + 5 * 64

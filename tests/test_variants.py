"""Variants set exactly the intended trainable parameters, and frozen ones never change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_cfg, tiny_model, trainable_names
from xmodal_ft import models, schemes, tasks, variants
from xmodal_ft.engine import FitConfig, fit

VARIANTS = ["fpt", "frozen_random", "unfrozen_pretrained", "unfrozen_random"]
IO = {"input_layer.weight", "input_layer.bias", "output_layer.weight", "output_layer.bias"}
GPT2_FPT = (
    IO
    | {"backbone.wpe.weight"}
    | {
        f"backbone.{ln}.{p}"
        for ln in ("h.0.ln_1", "h.0.ln_2", "h.1.ln_1", "h.1.ln_2", "ln_f")
        for p in ("weight", "bias")
    }
)
BERT_FPT = (
    IO
    | {"backbone.embeddings.position_embeddings.weight"}
    | {
        f"backbone.{ln}.LayerNorm.{p}"
        for ln in (
            "embeddings",
            *(
                f"encoder.layer.{i}.{part}"
                for i in (0, 1)
                for part in ("attention.output", "output")
            ),
        )
        for p in ("weight", "bias")
    }
)


def build_model(*overrides: str):
    cfg = make_cfg(*overrides)
    data = tasks.build(cfg.task)
    variant = variants.VariantConfig(**cfg.variant)
    model = models.build(
        models.ModelConfig(**cfg.model), data.spec, pretrained=variant.pretrained, seed=0
    )
    return model, variant, data


@pytest.mark.parametrize("variant", ["fpt", "frozen_random"])
def test_fpt_trains_only_norms_positions_io_gpt2(variant: str, tiny_gpt2_dir) -> None:
    model, cfg, _ = build_model(f"variant={variant}", f"model.path={tiny_gpt2_dir}")
    counts = variants.apply(model, cfg)
    assert trainable_names(model) == GPT2_FPT
    # 4·32+32 input, 32·10+10 output, 2048·32 positions, 5 layer norms of 2·32.
    assert counts["trainable"] == 160 + 330 + 65536 + 5 * 64


def test_fpt_trains_only_norms_positions_io_bert(tiny_bert_dir) -> None:
    model, cfg, _ = build_model("variant=fpt", "model=tiny_bert", f"model.path={tiny_bert_dir}")
    variants.apply(model, cfg)
    assert trainable_names(model) == BERT_FPT


@pytest.mark.parametrize("variant", ["unfrozen_pretrained", "unfrozen_random"])
def test_unfrozen_trains_everything(variant: str, tiny_gpt2_dir) -> None:
    model, cfg, _ = build_model(f"variant={variant}", f"model.path={tiny_gpt2_dir}")
    counts = variants.apply(model, cfg)
    assert counts["trainable"] == counts["total"]


def test_pretrained_variants_load_weights_random_ones_do_not(tiny_gpt2_dir) -> None:
    path = f"model.path={tiny_gpt2_dir}"
    pretrained, _, _ = build_model("variant=fpt", path)
    random, _, _ = build_model("variant=frozen_random", path)
    reference = models.AutoModel.from_pretrained(tiny_gpt2_dir)
    key = "h.0.attn.c_attn.weight"
    assert torch.equal(pretrained.backbone.state_dict()[key], reference.state_dict()[key])
    assert not torch.equal(random.backbone.state_dict()[key], reference.state_dict()[key])


@pytest.mark.parametrize("variant", VARIANTS)
def test_frozen_parameters_get_no_gradient_and_never_change(variant: str, tiny_gpt2_dir) -> None:
    model, cfg, data = build_model(f"variant={variant}", f"model.path={tiny_gpt2_dir}")
    variants.apply(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = schemes.build(model, schemes.SchemeConfig(), lr=1e-2).optimizer
    for _ in range(3):
        loss = F.cross_entropy(model(data.train.x[:8]), data.train.y[:8])
        loss.backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
        assert grads <= trainable_names(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable_names(model)


def test_fit_leaves_frozen_parameters_bit_identical(tiny_gpt2_dir) -> None:
    model, cfg, data = build_model("variant=fpt", f"model.path={tiny_gpt2_dir}")
    variants.apply(model, cfg)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    plan = schemes.build(model, schemes.SchemeConfig(), lr=1e-2)
    fit(model, plan, data, FitConfig(batch_size=8, max_steps=4, eval_every=2, progress=False))
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


# ---- every model family × variant × adapter: the exact trainable set ---------------------------

WEIGHT_BIAS = ("weight", "bias")
GPT2_LAYER = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
BERT_LAYER = [
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "attention.output.LayerNorm",
    "intermediate.dense", "output.dense", "output.LayerNorm",
]  # fmt: skip
BERT_EMBEDDINGS = ["position_embeddings", "token_type_embeddings"]
FAMILY = {  # model option → (every parameter name, layer norms, positions, adapter sites)
    "tiny_gpt2": (
        {"backbone.wpe.weight", "backbone.ln_f.weight", "backbone.ln_f.bias"}
        | {f"backbone.h.{i}.{m}.{p}" for i in (0, 1) for m in GPT2_LAYER for p in WEIGHT_BIAS},
        {n for n in GPT2_FPT if ".ln_" in n},
        {"backbone.wpe.weight"},
        [f"backbone.h.{i}.{m}" for i in (0, 1) for m in ("attn.c_proj", "mlp.c_proj")],
    ),
    "tiny_bert": (
        {f"backbone.embeddings.{e}.weight" for e in BERT_EMBEDDINGS}
        | {f"backbone.embeddings.LayerNorm.{p}" for p in ("weight", "bias")}
        | {
            f"backbone.encoder.layer.{i}.{m}.{p}"
            for i in (0, 1)
            for m in BERT_LAYER
            for p in ("weight", "bias")
        },
        {n for n in BERT_FPT if "LayerNorm" in n},
        {"backbone.embeddings.position_embeddings.weight"},
        [
            f"backbone.encoder.layer.{i}.{m}"
            for i in (0, 1)
            for m in ("attention.output.dense", "output.dense")
        ],
    ),
}


def adapter_names(sites: list[str]) -> set[str]:
    return {f"{s}.adapter.{m}.{p}" for s in sites for m in ("down", "up") for p in WEIGHT_BIAS}


@pytest.mark.parametrize("adapter", ["none", "houlsby"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", sorted(FAMILY))
def test_trainable_set_of_every_family_variant_and_adapter(
    request: pytest.FixtureRequest, model: str, variant: str, adapter: str
) -> None:
    path = request.getfixturevalue(f"{model}_dir")  # a saved "pretrained" checkpoint
    net, cfg, _ = build_model(f"model={model}", f"variant={variant}", f"model.path={path}")
    variants.apply(net, cfg)
    schemes.build(net, schemes.SchemeConfig(adapter=adapter), lr=1e-3)
    backbone, norms, positions, sites = FAMILY[model]
    adapters = adapter_names(sites) if adapter == "houlsby" else set()
    assert {n for n, _ in net.named_parameters()} == IO | backbone | adapters
    frozen_backbone = variant in ("fpt", "frozen_random")
    if adapter == "houlsby":  # Houlsby et al.: adapters, layer norms and the task layers train
        expected = IO | norms | adapters
    else:
        expected = IO | norms | positions if frozen_backbone else IO | backbone
    assert trainable_names(net) == expected


def test_patterns_matching_nothing_are_a_clear_error_and_matches_are_listed() -> None:
    model = tiny_model()
    assert variants.set_trainable(model, ["output_layer.*"]) == [
        "output_layer.weight", "output_layer.bias"
    ]  # fmt: skip
    cfg = variants.VariantConfig("typo", pretrained=False, trainable=["*ln_q*"])
    with pytest.raises(ValueError) as error:
        variants.apply(model, cfg)
    assert str(error.value) == "variant typo: no parameter matches trainable=['*ln_q*']"

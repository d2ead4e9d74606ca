"""Schemes: per-layer LRs, gradual unfreezing at epoch boundaries, slanted triangular schedule,
Houlsby adapters, every scheme × adapter × schedule combination, and clear errors."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import CONF, SIGN, make_cfg, read_results, sign_task, tiny_model, trainable_names
from glue_helpers import write_sst2
from xmodal_ft import adapters, engine, models, run, schedules, schemes, tasks, variants
from xmodal_ft.engine import FitConfig, fit
from xmodal_ft.layers import find_layers, layer_groups
from xmodal_ft.schemes import SchemeConfig, SchemeError
from xmodal_ft.tasks.base import TaskSpec

SCHEMES = ["fixed", "nesterov", "discriminative", "gradual_unfreeze"]
TEXT = TaskSpec("text", num_classes=2, input_kind="text", seq_len=16, vocab_size=99)
# One Houlsby adapter at hidden 32, reduction 16: down 32·2+2, up 2·32+32; two per layer, 2 layers.
TINY_ADAPTER_PARAMS = 4 * (32 * 2 + 2 + 2 * 32 + 32)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sst2(tmp_path_factory.mktemp("glue") / "SST-2", n_train=40, n_dev=8)


def tiny(model: str, spec: TaskSpec = TEXT) -> models.CrossModalModel:
    return tiny_model(model, spec)


def group_lrs(plan: engine.TrainPlan) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in plan.optimizer.param_groups}


# ---- layer groups and per-layer learning rates -------------------------------------------------


def test_layer_groups_run_from_embeddings_to_head_bert() -> None:
    groups = layer_groups(tiny("tiny_bert"))
    assert [g.name for g in groups] == ["bottom", "layer.0", "layer.1", "top"]
    assert all(n.startswith("backbone.embeddings.") for n in groups[0].params)
    assert all(n.startswith("backbone.encoder.layer.1.") for n in groups[2].params)
    assert set(groups[3].params) == {"output_layer.weight", "output_layer.bias"}


def test_layer_groups_put_input_layer_at_bottom_and_final_norm_on_top_gpt2() -> None:
    groups = layer_groups(tiny("tiny_gpt2", SIGN))
    assert set(groups[0].params) == {
        "backbone.wpe.weight",
        "input_layer.weight",
        "input_layer.bias",
    }
    assert set(groups[-1].params) == {
        "backbone.ln_f.weight", "backbone.ln_f.bias", "output_layer.weight", "output_layer.bias"
    }  # fmt: skip


def test_discriminative_lr_decays_by_depth_from_the_top() -> None:
    plan = schemes.build(tiny("tiny_bert"), SchemeConfig("discriminative", decay=0.5), lr=1.0)
    assert group_lrs(plan) == {"bottom": 0.125, "layer.0": 0.25, "layer.1": 0.5, "top": 1.0}


def test_discriminative_default_decay_is_ulmfit_2_6() -> None:
    cfg = SchemeConfig(**make_cfg("scheme=discriminative").scheme)
    plan = schemes.build(tiny("tiny_gpt2"), cfg, lr=2.6**3)
    assert [round(lr, 12) for lr in group_lrs(plan).values()] == [1.0, 2.6, 6.76, 17.576]


def test_discriminative_skips_groups_with_nothing_to_train() -> None:
    model = tiny("tiny_bert")
    variants.set_trainable(model, ["output_layer.*", "*encoder.layer.1.*"])
    plan = schemes.build(model, SchemeConfig("discriminative", decay=0.5), lr=1.0)
    assert group_lrs(plan) == {"layer.1": 0.5, "top": 1.0}


@pytest.mark.parametrize("name", ["fixed", "nesterov", "gradual_unfreeze"])
def test_single_lr_schemes_give_every_group_the_base_lr(name: str) -> None:
    plan = schemes.build(tiny("tiny_bert"), SchemeConfig(name), lr=0.01)
    assert {g["lr"] for g in plan.optimizer.param_groups} == {0.01}


def test_nesterov_is_sgd_with_nesterov_momentum() -> None:
    optimizer = schemes.build(tiny("tiny_bert"), SchemeConfig("nesterov"), lr=0.1).optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"]


@pytest.mark.parametrize("name", SCHEMES)
def test_optimizers_are_fused_and_train_as_the_foreach_kernels_do(name: str) -> None:
    x, y = torch.rand(8, SIGN.seq_len, SIGN.token_dim), torch.randint(0, 2, (8,))
    losses = []
    for fused in (True, False):
        model = tiny("tiny_gpt2", SIGN)
        optimizer = schemes.build(model, SchemeConfig(name), lr=0.01).optimizer
        assert all(g["fused"] for g in optimizer.param_groups)
        for group in optimizer.param_groups:
            group.update(fused=fused, foreach=not fused)
        torch.manual_seed(0)  # same dropout masks
        losses.append([])
        for _ in range(4):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[-1].append(loss.item())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-5)


# ---- gradual unfreezing -------------------------------------------------------------------------


def test_gradual_unfreezing_changes_the_trainable_set_exactly_at_epoch_boundaries() -> None:
    model = tiny("tiny_gpt2", SIGN)
    groups = {g.name: set(g.params) for g in layer_groups(model)}
    plan = schemes.build(model, SchemeConfig("gradual_unfreeze"), lr=1e-3)
    seen: list[set[str]] = []
    schedule = plan.lr_scale
    plan.lr_scale = lambda step: (seen.append(trainable_names(model)), schedule(step))[1]
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 32 examples, batch 8: 4 steps per epoch, 5 epochs.
    fit(
        model,
        plan,
        sign_task(32),
        FitConfig(batch_size=8, max_steps=20, eval_every=100, progress=False),
    )
    top, l1, l0, bottom = groups["top"], groups["layer.1"], groups["layer.0"], groups["bottom"]
    expected = [top, top | l1, top | l1 | l0, top | l1 | l0 | bottom, top | l1 | l0 | bottom]
    assert seen == [s for s in expected for _ in range(4)]
    # The bottom group unfroze for the last 8 steps only; by then the rest had trained for 12+.
    assert all(not torch.equal(p, initial[n]) for n, p in model.named_parameters())


def test_gradual_unfreezing_never_unfreezes_what_the_variant_froze() -> None:
    model = tiny("tiny_bert")
    variants.set_trainable(model, ["output_layer.*", "*LayerNorm*"])
    allowed = trainable_names(model)
    plan = schemes.build(model, SchemeConfig("gradual_unfreeze"), lr=1e-3)
    engine.enter_epoch(plan, 10)
    assert trainable_names(model) == allowed
    engine.enter_epoch(plan, 0)
    assert trainable_names(model) == {"output_layer.weight", "output_layer.bias"}


# ---- slanted triangular schedule ---------------------------------------------------------------


def test_slanted_triangular_peaks_at_cut_frac_and_floors_at_lr_over_ratio() -> None:
    scale = schedules.slanted_triangular(total_steps=100, cut_frac=0.1, ratio=32)
    assert scale(0) == 1 / 32  # floor
    assert scale(5) == 16.5 / 32  # halfway up
    assert scale(10) == 1.0  # peak at cut = 0.1 · 100
    assert scale(55) == 16.5 / 32  # halfway down
    assert scale(100) == 1 / 32  # back on the floor at the end
    values = [scale(t) for t in range(101)]
    assert max(values) == 1.0 and values.index(1.0) == 10 and min(values) == 1 / 32


@pytest.fixture
def lrs_used() -> Iterator[list[list[float]]]:
    """The LR of every parameter group at every optimizer step taken while the fixture is live."""
    used: list[list[float]] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: used.append([g["lr"] for g in optimizer.param_groups])
    )
    yield used
    handle.remove()


@pytest.mark.parametrize("schedule", ["constant", "slanted_triangular"])
@pytest.mark.parametrize("name", SCHEMES)
def test_the_configured_schedule_sets_the_lr_of_every_step_of_a_run(
    tmp_path: Path, lrs_used: list, name: str, schedule: str
) -> None:
    overrides = [f"scheme={name}", f"scheme.schedule={schedule}"]
    overrides += ["scheme.decay=0.5"] if name == "discriminative" else []
    cfg = make_cfg("variant=unfrozen_random", "lr=0.01", "max_steps=20", *overrides)
    run(cfg, run_dir=tmp_path)  # 64 examples, batch 8: gradual unfreezing reaches the bottom
    scale = schedules.slanted_triangular(20) if schedule != "constant" else lambda step: 1.0
    depths = {"discriminative": [3, 2, 1, 0], "gradual_unfreeze": [0] * 4}.get(name, [0])
    base = [0.01 * 0.5**depth for depth in depths]
    assert len(lrs_used) == 20
    for step, lrs in enumerate(lrs_used):
        assert lrs == pytest.approx([b * scale(step) for b in base], rel=1e-12), step
    if schedule == "slanted_triangular":  # rises to the peak at step 2, then decays to the floor
        assert lrs_used[2][-1] == pytest.approx(0.01) and lrs_used[0][-1] < 0.01 / 10


# ---- Houlsby adapters ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_gpt2"])
def test_adapter_starts_as_identity_and_adds_the_expected_parameters(model_name: str) -> None:
    model = tiny(model_name).eval()
    x = torch.randint(5, 99, (3, 10))
    lengths = torch.tensor([10, 7, 4])
    before = model(x, lengths)
    n_before = sum(p.numel() for p in model.parameters())
    plan = schemes.build(model, SchemeConfig("fixed", adapter="houlsby"), lr=1e-2)
    assert torch.equal(model(x, lengths), before)
    assert plan.params["adapter"] == TINY_ADAPTER_PARAMS
    assert plan.params["total"] == n_before + TINY_ADAPTER_PARAMS


def test_adapter_trains_only_adapters_norms_and_head_and_changes_the_output() -> None:
    model = tiny("tiny_bert")
    plan = schemes.build(model, SchemeConfig("fixed", adapter="houlsby"), lr=1e-2)
    names = trainable_names(model)
    assert all(".adapter." in n or "LayerNorm" in n or n.startswith("output_layer") for n in names)
    # 648 adapter + 5 layer norms of 2·32 + head 32·2+2.
    assert plan.params["trainable"] == TINY_ADAPTER_PARAMS + 5 * 64 + 66
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in names}
    x, y = torch.randint(5, 99, (8, 10)), torch.tensor([0, 1] * 4)
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        plan.optimizer.step()
        plan.optimizer.zero_grad(set_to_none=True)
    up = model.backbone.encoder.layer[0].output.dense.adapter.up.weight
    assert up.abs().sum() > 0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_adapter_keeps_the_original_parameter_names() -> None:
    model = tiny("tiny_gpt2")
    names = {n for n, _ in model.named_parameters()}
    adapters.add_houlsby(model)
    assert names <= {n for n, _ in model.named_parameters()}


def test_adapter_on_an_unsupported_architecture_is_a_clear_error() -> None:
    arch = {"model_type": "distilbert", "n_layers": 1, "n_heads": 2, "dim": 32, "hidden_dim": 64}
    cfg = models.ModelConfig("tiny_distilbert", arch={**arch, "vocab_size": 99}, pooling="first")
    model = models.build(cfg, TEXT, pretrained=False, seed=0)
    with pytest.raises(
        SchemeError, match="does not support model type 'distilbert'; supported: bert"
    ):
        schemes.build(model, SchemeConfig("fixed", adapter="houlsby"), lr=1e-3)


# ---- every combination from the command line ---------------------------------------------------


@pytest.mark.parametrize(
    "scheme, adapter, schedule",
    list(itertools.product(SCHEMES, ["none", "houlsby"], ["constant", "slanted_triangular"])),
)
def test_every_combination_composes_and_runs_on_text(
    tmp_path: Path, tiny_bert_text: Path, glue_dir: Path, scheme: str, adapter: str, schedule: str
) -> None:
    cfg = make_cfg(
        "task=sst2", f"task.data_dir={glue_dir}", "task.val_size=8",
        "model=tiny_bert", f"model.path={tiny_bert_text}", "variant=unfrozen_pretrained",
        f"scheme={scheme}", f"scheme.adapter={adapter}", f"scheme.schedule={schedule}",
        "max_epochs=2",
    )  # fmt: skip
    val = run(cfg, run_dir=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["val/acc"] == val and results["steps"] == 8  # 32 rows // 8 × 2 epochs
    assert results["params"]["adapter"] == (TINY_ADAPTER_PARAMS if adapter == "houlsby" else 0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_schemes_apply_to_cross_modal_tasks(tmp_path: Path, scheme: str) -> None:
    cfg = make_cfg(
        "variant=frozen_random", f"scheme={scheme}", "scheme.adapter=houlsby",
        "scheme.schedule=slanted_triangular",
    )  # fmt: skip
    val = run(cfg, run_dir=tmp_path)
    results = read_results(tmp_path)
    assert results["val/acc"] == val
    # Adapters, 5 layer norms of 2·32, input 4·32+32 and output 32·10+10 (positions frozen).
    assert results["params"]["trainable"] == TINY_ADAPTER_PARAMS + 5 * 64 + 160 + 330


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"name": "adamw"}, "unknown scheme 'adamw'; choose one of: fixed, nesterov"),
        ({"adapter": "lora"}, "unknown scheme.adapter 'lora'; choose one of: none, houlsby"),
        ({"schedule": "cosine"}, "unknown scheme.schedule 'cosine'; choose one of: constant"),
        ({"name": "discriminative", "decay": 0.0}, r"scheme.decay=0.0 must be > 0"),
        ({"name": "discriminative", "decay": -0.5}, r"scheme.decay=-0.5 must be > 0"),
        ({"schedule": "slanted_triangular", "cut_frac": 1.5}, r"scheme.cut_frac=1.5 must lie"),
        ({"adapter": "houlsby", "reduction": 0}, r"scheme.reduction=0 must lie in 1..32"),
    ],
)
def test_bad_scheme_options_are_clear_errors(changes: dict, match: str) -> None:
    model = tiny("tiny_bert")
    names = {n for n, _ in model.named_parameters()}
    with pytest.raises(SchemeError, match=match):
        schemes.build(model, SchemeConfig(**{"name": "fixed", **changes}), lr=1e-3, total_steps=10)
    if "reduction" not in changes:  # validation happens before the model is touched
        assert {n for n, _ in model.named_parameters()} == names


def test_unknown_scheme_on_the_command_line_lists_the_options() -> None:
    with pytest.raises(ConfigCompositionException, match="Available options"):
        make_cfg("scheme=adamw")


def test_decay_on_the_command_line_is_checked_before_training(tmp_path: Path) -> None:
    with pytest.raises(SchemeError, match="scheme.decay=0.0 must be > 0"):  # a float (schema)
        run(make_cfg("variant=frozen_random", "scheme=discriminative", "scheme.decay=0"), tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (Path(CONF) / "experiment").glob("survey_*.yaml"))
)
def test_experiment_presets_compose_with_the_survey_settings(preset: str) -> None:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"])
    assert cfg.batch_size == 32 and cfg.variant.name == "unfrozen_pretrained"
    assert (cfg.task.name, cfg.max_epochs) in {("sst2", 5), ("cola", 10)}
    assert cfg.lr == (2e-5 if preset.endswith("lr2e-5") else 0.01)
    assert tasks.BUILDERS[cfg.task.name]


@pytest.mark.parametrize(
    ("total", "cut_frac", "ratio", "expected"),
    [
        (2, 0.1, 32, [1 / 32, 1.0, 1 / 32]),  # the smallest budget: cut clamped up to step 1
        (10, 0.01, 32, [1 / 32, 1.0]),  # cut_frac · total < 1: still one rising step
        (10, 0.95, 32, [1 / 32] + [(1 + k / 9 * 31) / 32 for k in range(1, 9)] + [1.0, 1 / 32]),
        (4, 0.5, 1, [1.0] * 5),  # ratio 1: a constant LR
    ],
)
def test_slanted_triangular_edges(total: int, cut_frac: float, ratio: float, expected) -> None:
    scale = schedules.slanted_triangular(total, cut_frac, ratio)
    assert [scale(t) for t in range(len(expected))] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("total", "cut_frac", "ratio", "match"),
    [
        (1, 0.1, 32, r"needs a budget of >= 2 steps \(max_steps\), got 1"),
        (10, 0.0, 32, r"scheme.cut_frac=0.0 must lie in \(0, 1\)"),
        (10, 1.0, 32, r"scheme.cut_frac=1.0 must lie in \(0, 1\)"),
        (10, 0.1, 0.5, r"scheme.ratio=0.5 must be >= 1 \(ULMFiT: 32\)"),
    ],
)
def test_slanted_triangular_bad_settings(total: int, cut_frac: float, ratio: float, match) -> None:
    with pytest.raises(ValueError, match=match):
        schedules.slanted_triangular(total, cut_frac, ratio)


def test_layer_wise_schemes_on_a_model_without_a_layer_stack_name_the_fix() -> None:
    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(2, 2))
            self.backbone.empty = torch.nn.ModuleList()  # an empty list is no stack

    with pytest.raises(SchemeError) as error:
        schemes.build(Flat(), SchemeConfig("discriminative"), lr=1.0)
    assert str(error.value) == (
        "Sequential has no nn.ModuleList of layers: layer-wise schemes (discriminative, "
        "gradual_unfreeze) and adapters need one; use scheme=fixed"
    )


def test_a_one_layer_stack_is_a_stack() -> None:
    model = tiny_model("tiny_gpt2", SIGN)
    del model.backbone.h[1]
    names = [g.name for g in layer_groups(model)]
    assert names == ["bottom", "layer.0", "top"]


def test_layer_groups_of_a_model_without_an_input_layer() -> None:
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Module()
            self.backbone.embed = torch.nn.Linear(2, 2)
            self.backbone.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
            self.head = torch.nn.Linear(2, 1)

    groups = {g.name: sorted(g.params) for g in layer_groups(Plain())}
    assert groups == {
        "bottom": ["backbone.embed.bias", "backbone.embed.weight"],
        "layer.0": ["backbone.layers.0.bias", "backbone.layers.0.weight"],
        "top": ["head.bias", "head.weight"],
    }


def test_the_stack_is_the_module_list_holding_the_most_parameters() -> None:
    backbone = torch.nn.Module()
    backbone.zzz = torch.nn.ModuleList([torch.nn.Linear(1, 1)])  # registered first, fewer params
    backbone.aaa = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
    name, stack = find_layers(backbone)
    assert name == "aaa" and stack is backbone.aaa

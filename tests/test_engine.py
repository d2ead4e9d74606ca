"""The training loop: learning, early stopping, best-state restore, unfreeze hooks."""

from __future__ import annotations

import copy

import torch

from conftest import make_cfg
from xmodal_ft import models, schemes
from xmodal_ft.engine import FitConfig, evaluate, fit
from xmodal_ft.schemes import TrainPlan
from xmodal_ft.tasks.base import Split, TaskData, TaskSpec

SPEC = TaskSpec("sign", num_classes=2, input_kind="continuous", seq_len=8, token_dim=3)


def sign_task(n: int = 256) -> TaskData:
    """Label = whether the first feature summed over tokens is positive: learnable in few steps."""
    g = torch.Generator().manual_seed(0)

    def split(m: int) -> Split:
        x = torch.randn(m, 8, 3, generator=g)
        return Split(x, (x[:, :, 0].sum(dim=1) > 0).long())

    return TaskData(SPEC, split(n), split(128), split(128))


def tiny_model() -> models.CrossModalModel:
    cfg = models.ModelConfig(**make_cfg("model=tiny_gpt2").model)
    return models.build(cfg, SPEC, pretrained=False, seed=0)


def test_fit_learns_a_learnable_task() -> None:
    model = tiny_model()
    plan = schemes.build(model, schemes.SchemeConfig(), lr=3e-3)
    result = fit(
        model,
        plan,
        sign_task(),
        FitConfig(batch_size=16, max_steps=150, eval_every=50, progress=False),
    )
    assert result.best_val["acc"] > 0.8
    assert result.test["acc"] > 0.75
    assert [h["step"] for h in result.history] == [0, 50, 100, 150]


def test_early_stopping_after_patience_evaluations_without_improvement() -> None:
    model = tiny_model()
    plan = schemes.build(model, schemes.SchemeConfig(), lr=1e-30)  # nothing changes
    cfg = FitConfig(batch_size=8, max_steps=1000, eval_every=5, patience=2, progress=False)
    result = fit(model, plan, sign_task(), cfg)
    assert result.stopped_early
    assert result.best_step == 0
    assert result.steps == 10  # evaluations at 0 (best), 5 and 10 (two without improvement)


def test_test_metric_comes_from_the_best_validation_weights() -> None:
    data = sign_task()
    model = tiny_model()
    initial = copy.deepcopy(model)
    # A huge LR wrecks the model after step 0, so the best validation state is the initial one.
    plan = schemes.build(model, schemes.SchemeConfig(), lr=50.0)
    result = fit(
        model,
        plan,
        data,
        FitConfig(batch_size=8, max_steps=20, eval_every=10, grad_clip=None, progress=False),
    )
    if result.best_step == 0:
        expected = evaluate(initial, data.test, ("acc",), 64)
        assert result.test == expected
        for (name, p), q in zip(model.named_parameters(), initial.parameters(), strict=True):
            assert torch.equal(p, q), name
    else:  # the restored weights are those that scored best_val
        assert evaluate(model, data.val, ("acc",), 64) == result.best_val


def test_epoch_hook_runs_at_each_epoch_start_and_unfrozen_weights_restore() -> None:
    data = sign_task(n=32)  # 4 batches of 8 per epoch
    model = tiny_model()
    head = model.output_layer.weight
    head.requires_grad_(False)
    initial_head = head.detach().clone()
    epochs: list[int] = []

    def on_epoch(epoch: int) -> None:
        epochs.append(epoch)
        if epoch == 1:
            head.requires_grad_(True)

    params = list(model.parameters())
    plan = TrainPlan(torch.optim.SGD(params, lr=1e-30), on_epoch=on_epoch)
    fit(model, plan, data, FitConfig(batch_size=8, max_steps=12, eval_every=100, progress=False))
    assert epochs == [0, 1, 2]
    # Best state is step 0 (tiny LR: no val change), saved while the head was frozen.
    assert torch.equal(model.output_layer.weight, initial_head)


def test_lr_scale_sets_each_groups_lr_per_step() -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD(
        [
            {"params": [model.output_layer.weight], "lr": 1.0},
            {"params": [model.output_layer.bias], "lr": 0.5},
        ],
        lr=1.0,
    )
    scale = lambda step: 0.1 * (step + 1)  # noqa: E731
    fit(
        model,
        TrainPlan(optimizer, lr_scale=scale),
        sign_task(32),
        FitConfig(batch_size=8, max_steps=3, eval_every=100, progress=False),
    )
    assert [round(g["lr"], 6) for g in optimizer.param_groups] == [0.3, 0.15]

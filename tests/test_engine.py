"""The training loop: learning, early stopping, best-state restore, unfreeze hooks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_cfg, sign_task, tiny_model, with_keys
from xmodal_ft import engine, run, schemes
from xmodal_ft.engine import FitConfig, Run, TrainPlan, Unfreeze, evaluate, evaluation, fit, loop
from xmodal_ft.engine.layout import layout_of
from xmodal_ft.tasks.base import Split, TaskData, subsample


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


class ScriptedValidation:
    """Stands in for `evaluation.evaluate_runs` of one run: validation scores follow a script, test
    scores are fixed."""

    def __init__(self, val_scores: list[float]):
        self.scores = list(val_scores)

    def __call__(self, model, runs, split, names, cfg, desc, on_batch=None) -> list[dict]:
        assert runs == 1
        return [{"acc": -1.0 if desc == "test" else self.scores.pop(0)}]


# Evaluations every 2 steps: 0.5 (best), 0.4, 0.6 (best: the count restarts), 0.55, 0.6 (a tie
# is no improvement), 0.59 → with patience 3 the run stops at step 10, best at step 4.
SCRIPT = [0.5, 0.4, 0.6, 0.55, 0.6, 0.59, 0.7, 0.8, 0.9]


@pytest.mark.parametrize(
    ("patience", "best_step", "stop_step", "stopped"),
    [(3, 4, 10, True), (2, 4, 8, True), (4, 16, 16, False), (None, 16, 16, False)],
)
def test_early_stopping_counts_evaluations_since_the_last_strict_improvement(
    monkeypatch, patience: int | None, best_step: int, stop_step: int, stopped: bool
) -> None:
    data = sign_task()
    monkeypatch.setattr(evaluation, "evaluate_runs", ScriptedValidation(SCRIPT))
    model = tiny_model()
    plan = schemes.build(model, schemes.SchemeConfig(), lr=1e-3)
    cfg = FitConfig(batch_size=8, max_steps=16, eval_every=2, patience=patience, progress=False)
    result = fit(model, plan, data, cfg)
    assert result.best_step == best_step
    assert result.best_val == {"acc": SCRIPT[best_step // 2]}
    assert result.steps == stop_step
    assert result.stopped_early == stopped
    assert [h["step"] for h in result.history] == list(range(0, stop_step + 1, 2))
    assert result.test == {"acc": -1.0}


def test_patience_from_the_config_stops_a_run(tmp_path) -> None:
    cfg = make_cfg("variant=unfrozen_random", "lr=1e-12", "patience=2", "eval_every=2")
    cfg = with_keys(cfg, max_steps=100)
    run(cfg, run_dir=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stopped_early"] is True
    assert (results["best_step"], results["steps"]) == (0, 4)


def predictions(model: nn.Module, split: Split) -> torch.Tensor:
    """The model's predicted classes on `split` (eval mode, no gradients, RNG untouched)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(split.x).argmax(dim=-1)
    model.train(was_training)
    return pred


class Snapshot:
    """A tracker that copies all parameters and the val predictions when step `at` is logged."""

    def __init__(self, model: nn.Module, val: Split, at: int):
        self.model, self.val, self.at = model, val, at
        self.params: dict[str, torch.Tensor] = {}
        self.val_pred = torch.empty(0)

    def log(self, values: dict[str, float], step: int) -> None:
        if step == self.at and "train/loss" in values:  # after step `at`'s update, before its eval
            self.params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            self.val_pred = predictions(self.model, self.val)

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


def train_with_snapshot(scheme: schemes.SchemeConfig, lr: float, cfg: FitConfig, at: int):
    """Train once, snapshotting step `at`; then train again from scratch with validation labels
    that only the step-`at` model predicts perfectly, so that step is the best one."""
    data = sign_task(cfg.batch_size * 4)
    torch.manual_seed(0)
    model = tiny_model()
    snapshot = Snapshot(model, data.val, at)
    fit(model, schemes.build(model, scheme, lr=lr, total_steps=cfg.max_steps), data, cfg, snapshot)
    rigged = TaskData(data.spec, data.train, Split(data.val.x, snapshot.val_pred), data.test)
    torch.manual_seed(0)
    model = tiny_model()
    plan = schemes.build(model, scheme, lr=lr, total_steps=cfg.max_steps)
    return model, fit(model, plan, rigged, cfg), snapshot, rigged


def test_best_weights_of_a_middle_step_are_restored_after_they_moved_on() -> None:
    cfg = FitConfig(batch_size=8, max_steps=20, eval_every=10, log_every=10, progress=False)
    model, result, snapshot, data = train_with_snapshot(schemes.SchemeConfig(), 3e-2, cfg, at=10)
    assert result.best_step == 10 and result.best_val == {"acc": 1.0}
    assert result.history[0]["val/acc"] < 1.0 and result.history[-1]["step"] == 20
    for name, param in model.named_parameters():
        assert torch.equal(param, snapshot.params[name]), name
    assert result.test == evaluate(model, data.test, ("acc",), 64)


def test_best_weights_restore_parameters_unfrozen_after_the_best_step() -> None:
    # Gradual unfreezing, 4 steps per epoch: the best step (4) ends epoch 0, when only the top
    # group trained; layer.1 and layer.0 then unfreeze and move. Restoring step 4 must put them
    # back to their initial values, not leave them where they moved.
    scheme = schemes.SchemeConfig("gradual_unfreeze")
    cfg = FitConfig(batch_size=8, max_steps=12, eval_every=4, log_every=4, progress=False)
    model, result, snapshot, _ = train_with_snapshot(scheme, 3e-2, cfg, at=4)
    assert result.best_step == 4
    initial = dict(tiny_model().named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, snapshot.params[name]), name
        if name.startswith(("backbone.h.", "input_layer", "backbone.wpe")):
            assert torch.equal(param, initial[name]), name  # untouched in epoch 0


def test_unfreeze_events_set_what_trains_per_epoch_and_best_weights_restore_late_ones(
    monkeypatch,
) -> None:
    monkeypatch.setattr(evaluation, "evaluate_runs", ScriptedValidation([0.9, 0.5, 0.4, 0.3]))
    model = tiny_model()
    head = model.output_layer.weight
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = TrainPlan(
        torch.optim.SGD(list(model.parameters()), lr=0.1), unfreeze=[Unfreeze(1, (head,), "head")]
    )
    trains_head: list[bool] = []
    plan.lr_scale = lambda step: float(trains_head.append(head.requires_grad) is None)
    cfg = FitConfig(batch_size=8, max_steps=12, eval_every=4, progress=False)
    result = fit(model, plan, sign_task(n=32), cfg)  # 4 batches of 8 per epoch
    assert trains_head == [False] * 4 + [True] * 8
    assert result.best_step == 0
    # Restored to step 0 (best), when the head had not yet joined: it is back too.
    for name, param in model.named_parameters():
        assert torch.equal(param, initial[name]), name


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


def test_validation_scores_the_fixed_seeded_subset() -> None:
    data = sign_task()  # 128 validation examples
    model = tiny_model()
    plan = schemes.build(model, schemes.SchemeConfig(), lr=3e-3)
    cfg = FitConfig(batch_size=16, max_steps=20, eval_every=20, val_subset=24, progress=False)
    result = fit(model, plan, data, cfg)
    subset = subsample(data.val, 24, seed=0)
    assert len(subset) == 24
    assert result.history[-1]["val/acc"] == evaluate(model, subset, ("acc",), 64)["acc"]
    assert result.best_val["acc"] * 24 == pytest.approx(round(result.best_val["acc"] * 24))


def test_validation_time_is_part_of_the_training_time() -> None:
    model = tiny_model()
    plan = schemes.build(model, schemes.SchemeConfig(), lr=1e-3)
    result = fit(model, plan, sign_task(), FitConfig(max_steps=2, eval_every=1, progress=False))
    assert 0 < result.val_seconds <= result.train_seconds  # validation runs inside the loop


class Clock:
    """A `time` module whose clock advances one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_a_stopped_runs_validation_time_stops_growing(monkeypatch) -> None:
    """Each validation pass takes one second on the fake clock: a run's validation time counts
    the passes it took part in, not those of the runs that went on after it stopped."""

    def scores(model, runs, split, names, cfg, desc, on_batch=None) -> list[dict[str, float]]:
        scores.calls += 1  # run 0 improves every pass, run 1 never after step 2
        return [{"acc": scores.calls / 100}, {"acc": 0.5}][:runs]  # run 1 left: runs = 1

    scores.calls = 0
    monkeypatch.setattr(evaluation, "evaluate_runs", scores)
    monkeypatch.setattr(loop, "time", Clock())
    models = [tiny_model(), tiny_model()]
    with torch.no_grad():
        models[1].output_layer.bias.add_(1.0)  # not equal: step 0 scores both runs
    plans = [schemes.build(m, schemes.SchemeConfig(), lr=1e-3) for m in models]
    cfg = FitConfig(batch_size=8, max_steps=12, eval_every=2, patience=2, progress=False)
    runs = [Run(model, plan, cfg) for model, plan in zip(models, plans, strict=True)]
    layout = layout_of(runs)
    list(engine.train(layout, sign_task()))
    layout.close()
    going, stopped = (run.result for run in runs)
    assert stopped.stopped_early and stopped.steps == 6 and not going.stopped_early
    assert (going.val_seconds, stopped.val_seconds) == (7.0, 4.0)  # passes at 0, 2, 4, … 12


def test_a_single_run_imports_no_lockstep(tmp_path) -> None:
    """Lockstep (and the newer transformers it needs) is imported by groups of runs only."""
    code = (
        "import sys; from conftest import make_cfg; from xmodal_ft import run; "
        "run(make_cfg('variant=unfrozen_random'), run_dir=sys.argv[1]); "
        "assert 'xmodal_ft.lockstep' not in sys.modules, 'imported'"
    )
    tests = Path(__file__).parent
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tests, check=True)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"

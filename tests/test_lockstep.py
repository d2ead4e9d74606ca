"""Lockstep: R runs trained together equal the same runs trained one after another."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import CONF, as_runs, make_cfg, tiny_model, with_keys
from hydra_plugins.xmodal_lockstep_launcher.composing import ComposeOnce, changed_values
from test_sweeps import TINY as SWEEP
from test_sweeps import results, sweep
from xmodal_ft import checkpoint, recipe, run, tasks
from xmodal_ft.engine import evaluation
from xmodal_ft.engine.layout import Single
from xmodal_ft.errors import LockstepError, UserError
from xmodal_ft.lockstep import fused, grouping, sharing, sizing
from xmodal_ft.lockstep.stack import Stacked
from xmodal_ft.recipe import entry
from xmodal_ft.recipe.building import build_model
from xmodal_ft.record.identity import run_key
from xmodal_ft.runspec import RunSpec
from xmodal_ft.tasks.augment import ImageAugment

GRID = [(1e-3, 0), (1e-2, 0), (1e-3, 1), (1e-2, 1)]  # (lr, seed), seeds contiguous
STEPS = ["max_steps=20", "eval_every=5", "log_every=1", "checkpoint_every=null"]  # dropout on


def specs(root: Path, *overrides: str) -> list[RunSpec]:
    return [
        RunSpec(make_cfg(*STEPS, *overrides, f"lr={lr}", f"seed={seed}"), root / f"{lr}_{seed}")
        for lr, seed in GRID
    ]


def records(run_dir: Path) -> tuple[list[float], list[float], dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in lines if "train/loss" in r]
    accs = [r["val/acc"] for r in lines if "val/acc" in r]
    return losses, accs, json.loads((run_dir / "results.json").read_text())


def assert_lockstep_equals_sequential(tmp_path: Path, *overrides: str, exact: bool = True) -> None:
    """Same losses (bit for bit; within fp32 rounding where runs' batches are padded to the
    longest sequence among them), same validation scores, same results."""
    sequential, together = specs(tmp_path / "seq", *overrides), specs(tmp_path / "ls", *overrides)
    for spec in sequential:
        recipe.train([spec])
    recipe.train(together, launcher="lockstep")
    for one, many in zip(sequential, together, strict=True):
        losses, accs, results = records(one.run_dir)
        ls_losses, ls_accs, ls_results = records(many.run_dir)
        assert len(losses) == results["steps"] >= 5
        assert ls_losses == (losses if exact else pytest.approx(losses, rel=1e-5))
        assert ls_accs == accs
        for key in ("config_hash", "best_step", "val/acc", "test/acc", "steps", "stopped_early"):
            assert ls_results[key] == results[key], key
        assert ls_results["launcher"] == "lockstep" and "launcher" not in results


@pytest.mark.parametrize(
    "variant", ["fpt", "frozen_random", "unfrozen_pretrained", "unfrozen_random"]
)
def test_every_variant_trains_in_lockstep_as_alone(tmp_path, tiny_gpt2_dir, variant) -> None:
    assert_lockstep_equals_sequential(tmp_path, f"variant={variant}", f"model.path={tiny_gpt2_dir}")


@pytest.mark.parametrize(
    "scheme",
    [
        ["scheme=nesterov", "scheme.adapter=houlsby", "scheme.schedule=slanted_triangular"],
        ["scheme=discriminative"],
        pytest.param(["scheme=nesterov"], marks=pytest.mark.slow),
        pytest.param(["scheme=fixed", "scheme.adapter=houlsby"], marks=pytest.mark.slow),
        pytest.param(
            ["scheme=fixed", "scheme.schedule=slanted_triangular"], marks=pytest.mark.slow
        ),
    ],
    ids=["nesterov-houlsby-slanted", "discriminative", "nesterov", "houlsby", "slanted"],
)
def test_schemes_train_in_lockstep_as_alone(tmp_path, tiny_bert_dir, scheme) -> None:
    model = ["model=tiny_bert", f"model.path={tiny_bert_dir}", "variant=unfrozen_pretrained"]
    assert_lockstep_equals_sequential(tmp_path, *model, *scheme)


def test_padded_sequences_draw_each_runs_own_dropout_masks(tmp_path) -> None:
    """ListOps batches have each run's own width alone and the group's longest in lockstep: every
    run still draws its lone run's dropout masks (for its own width), in modules and attention."""
    listops = ["task=listops", "task.min_len=8", "task.max_len=48", "task.n_train=64",
               "task.n_val=16", "task.n_test=16", "variant=unfrozen_random"]  # fmt: skip
    assert_lockstep_equals_sequential(tmp_path, *listops, "model.arch.n_head=1", exact=False)


def test_early_stopped_runs_stop_updating_while_the_others_go_on(tmp_path) -> None:
    assert_lockstep_equals_sequential(tmp_path, "variant=unfrozen_random", "patience=2")
    stopped = [
        json.loads(p.read_text())["stopped_early"] for p in tmp_path.glob("ls/*/results.json")
    ]
    assert any(stopped) and not all(stopped)


def test_step_0_validation_scores_each_seed_once(tmp_path, monkeypatch) -> None:
    """Runs of one seed have equal weights at step 0: one of them is scored (by its own model),
    later passes score every run at once; the scores are the lone runs' (the tests above)."""
    calls = []
    evaluate = evaluation.evaluate_runs

    def spy(model, runs, split, names, cfg, desc, on_batch=None):
        calls.append((desc, runs))
        return evaluate(model, runs, split, names, cfg, desc, on_batch)

    monkeypatch.setattr(evaluation, "evaluate_runs", spy)
    recipe.train(specs(tmp_path, "variant=unfrozen_random", "max_steps=5"))
    assert calls == [("val", 1), ("val", 1), ("val", 4), ("test", 4)]  # seeds 0 and 1


def test_groups_hold_runs_that_differ_only_in_lr_and_seed(tmp_path) -> None:
    runs = [
        RunSpec(make_cfg(f"lr={lr}", f"seed={seed}", *extra), tmp_path / f"{i}")
        for i, (lr, seed, extra) in enumerate(
            [(1e-3, 1, []), (1e-2, 0, []), (1e-3, 0, ["batch_size=4"]), (1e-3, 0, [])]
        )
    ]
    assert grouping.groups(runs) == [[3, 1, 0], [2]]  # by (seed, lr) within a group


def test_a_run_whose_checkpoint_is_damaged_groups_as_a_fresh_run(tmp_path) -> None:
    runs = [RunSpec(make_cfg(f"lr={lr}"), tmp_path / f"{lr}") for lr in (1e-3, 1e-2, 3e-2)]
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    for spec in runs:
        path = spec.checkpoint_file
        checkpoint.save(path, checkpoint.LoopState(step=4), model, optimizer)
    path.write_bytes(path.read_bytes()[:-100])  # the last run's file, cut short
    assert grouping.groups(runs) == [[0, 1], [2]]  # resuming at step 4 | starting afresh


def test_chunks_are_near_equal_and_at_most_max_runs() -> None:
    assert entry.chunks(list(range(27)), 10) == [list(range(9)), list(range(9, 18)),
                                                   list(range(18, 27))]  # fmt: skip
    assert [len(c) for c in entry.chunks(list(range(5)), 2)] == [2, 2, 1]
    assert entry.chunks([4, 2], 64) == [[4, 2]]


def test_gradual_unfreezing_is_refused_naming_the_default_launcher(tmp_path) -> None:
    runs = specs(tmp_path, "variant=unfrozen_random", "scheme=gradual_unfreeze")
    with pytest.raises(LockstepError, match="default launcher"):
        recipe.train(runs)
    with pytest.raises(LockstepError, match="default launcher"):
        recipe.train(runs[:2])  # the smallest group


# ---- hydra/launcher=lockstep ------------------------------------------------------------------


@pytest.mark.slow
def test_lockstep_sweep_writes_what_the_default_launcher_writes(tmp_path) -> None:
    sweep(tmp_path, "hydra/launcher=lockstep", "lr=1e-3,1e-2", "seed=0,1")
    paths = sorted(tmp_path.glob("*/results.json"))
    assert len(paths) == 4
    for path in paths:
        result = json.loads(path.read_text())
        hydra = yaml.safe_load((path.parent / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert path.parent.name == run_key(hydra["job"]["override_dirname"])  # the job's subdir
        assert (path.parent / "train.log").read_text()
        assert result["launcher"] == "lockstep"
        lr, seed = result["config"]["lr"], result["config"]["seed"]
        job = yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text())
        assert job == OmegaConf.to_container(make_cfg(*SWEEP, f"lr={lr}", f"seed={seed}"))
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        assert overrides[-2:] == [f"lr={lr}", f"seed={seed}"] == hydra["overrides"]["task"][-2:]
        reference = tmp_path / "reference" / f"{lr}_{seed}"
        run(make_cfg(*SWEEP, f"lr={lr}", f"seed={seed}"), run_dir=reference)
        expected = json.loads((reference / "results.json").read_text())
        for key in ("config_hash", "val/acc", "test/acc", "best_step", "history"):
            assert result[key] == expected[key], key
    relaunch = sweep(tmp_path, "hydra/launcher=lockstep", "lr=1e-3,1e-2", "seed=0,1")
    assert relaunch.output.count("complete results of this config: skipped") == 4


@pytest.mark.parametrize(
    ("first", "second", "reused"),
    [
        (["lr=0.001", "seed=0"], ["lr=0.01", "seed=1"], True),
        (
            ["scheme=discriminative", "scheme.decay=0.5"],
            ["scheme=discriminative", "scheme.decay=0.9"],
            True,
        ),
        (["model=tiny_gpt2", "lr=0.001"], ["model=tiny_bert", "lr=0.001"], False),  # a group
        (["lr=0.001"], ["+lr=0.01"], False),
        (["lr=0.001"], ["lr=0.001", "seed=1"], False),  # other keys
        (["seeds=[0]"], ["seeds=[1]"], False),  # not a scalar
        (["patience=null"], ["patience=3"], False),  # unset before: compose afresh
    ],
)
def test_only_jobs_differing_in_root_values_reuse_a_composed_config(first, second, reused):
    parser = OverridesParser.create()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        composed = compose("config", overrides=first, return_hydra_config=True)
    changed = changed_values(parser.parse_overrides(first), parser.parse_overrides(second),
                             composed)  # fmt: skip
    assert (changed is not None) == reused


@pytest.mark.parametrize("extra", [[], ["progress=false"]], ids=["lr-seed", "not-hashed-key"])
def test_a_derived_config_is_the_config_hydra_composes(extra: list[str]) -> None:
    """ComposeOnce's copy of a composed job with other root values equals Hydra's own
    composition of that job (its task overrides and override dirname included); a job that
    changes a config group is composed afresh."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["max_steps=7"], RunMode.MULTIRUN)
        once = ComposeOnce(loader)
        once.load_sweep_config(master, ["lr=0.001", "seed=0", *extra])
        job = ["lr=0.01", "seed=1", *[e.replace("false", "true") for e in extra]]
        derived = once.load_sweep_config(master, job)
        composed = loader.load_sweep_config(master, job)
        assert len(once.composed) == 1  # the second job was derived, not composed
        assert OmegaConf.to_container(derived) == OmegaConf.to_container(composed)
        assert derived.hydra.job.override_dirname == composed.hydra.job.override_dirname
        once.load_sweep_config(master, ["lr=0.01", "seed=1", "model=tiny_bert", *extra])
        assert len(once.composed) == 2  # another group option: composed


@pytest.mark.slow
def test_killed_lockstep_sweep_relaunch_resumes_every_run(tmp_path) -> None:
    args = ["lr=1e-3,1e-2", "seed=0,1", "max_steps=60", "eval_every=4", "checkpoint_every=4"]
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    proc = sweep(killed, "hydra/launcher=lockstep", *args, wait=False)
    deadline = time.time() + 240
    while len(list(killed.rglob("checkpoint-*.pt"))) < 4:
        assert time.time() < deadline and proc.poll() is None, "sweep ended before the kill"
        time.sleep(0.02)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not results(killed)
    relaunch = sweep(killed, "hydra/launcher=lockstep", *args)
    assert relaunch.output.count("resumed from") == 4
    assert not list(killed.rglob("checkpoint-*.pt"))
    sweep(uninterrupted, "hydra/launcher=lockstep", *args)
    expected = {(r["config"]["lr"], r["config"]["seed"]): r for r in results(uninterrupted)}
    resumed = {(r["config"]["lr"], r["config"]["seed"]): r for r in results(killed)}
    assert sorted(resumed) == sorted(expected)
    for key, result in resumed.items():
        for field in ("config_hash", "val/acc", "test/acc", "best_step", "steps", "history"):
            assert result[field] == expected[key][field], field


class Killed(Exception):
    """Stands in for a kill between two steps."""


@pytest.mark.parametrize("misfit", [False, True], ids=["resumed", "one-checkpoint-misfits"])
def test_a_killed_lockstep_group_resumes_every_run_exactly(
    tmp_path, monkeypatch, caplog, misfit
) -> None:
    """A group killed right after its checkpoints at step 8 and trained again resumes each run
    and ends as an uninterrupted group. A checkpoint that reads but does not fit its run (other
    shapes) is reported and its run trains from the start, apart from the resumed ones."""
    overrides = ["variant=unfrozen_random", "checkpoint_every=4"]
    whole, killed = specs(tmp_path / "whole", *overrides), specs(tmp_path / "killed", *overrides)
    recipe.train(whole, launcher="lockstep")
    save, saved = checkpoint.save, []

    def save_then_kill(path, state, *args) -> None:
        save(path, state, *args)
        saved.append(state.step)
        if saved.count(8) == len(killed):
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_kill)
    with pytest.raises(Killed):
        recipe.train(killed, launcher="lockstep")
    monkeypatch.setattr(checkpoint, "save", save)
    paths = sorted(tmp_path.glob("killed/*/checkpoint-*.pt"))
    assert len(paths) == len(killed) and all(checkpoint.step(p) == 8 for p in paths)
    if misfit:  # the last run's checkpoint, of its model with another input width
        data = tasks.build(dict(killed[-1].cfg.task), cache_dir=None)
        other = build_model(killed[-1].cfg, data, torch.device("cpu"))
        layer = other.input_layer
        other.input_layer = torch.nn.Linear(layer.in_features + 1, layer.out_features)
        optimizer = torch.optim.Adam(other.parameters())
        checkpoint.save(paths[-1], checkpoint.LoopState(step=8), other, optimizer)
    assert grouping.groups(killed) == [[0, 1, 2, 3]]  # every checkpoint reads at step 8
    with caplog.at_level(logging.INFO, logger="xmodal_ft"):
        recipe.train(killed, launcher="lockstep")
    assert caplog.text.count("resumed from") == len(killed) - misfit
    assert caplog.text.count("does not fit the model") == misfit
    for one, many in zip(whole, killed, strict=True):
        expected, result = records(one.run_dir)[2], records(many.run_dir)[2]
        for key in ("config_hash", "val/acc", "test/acc", "best_step", "steps", "history"):
            assert result[key] == expected[key], key
    assert not list(tmp_path.rglob("checkpoint-*.pt"))


@pytest.mark.slow
def test_optuna_trials_go_through_the_lockstep_launcher(tmp_path) -> None:
    sweep(tmp_path, "hydra/launcher=lockstep", "sweep=optuna", "seeds=[0,1]",
          "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")  # fmt: skip
    runs = results(tmp_path)
    assert len(runs) == 8 and all(r["launcher"] == "lockstep" for r in runs)
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    lrs = {r["config"]["lr"] for r in runs}
    mean_val = {lr: statistics.fmean(r["val/acc"] for r in runs if r["config"]["lr"] == lr)
                for lr in lrs}  # fmt: skip
    assert best["best_value"] == pytest.approx(max(mean_val.values()), abs=1e-12)


@pytest.mark.slow
def test_issue_grid_matches_the_default_launcher(tmp_path) -> None:
    """The issue's done-check grid at the LRs where the default launcher reproduces itself: at
    LR >= 1e-2 float rounding alone (1 vs 2 threads, sequential) moves val acc by up to 0.2
    (README, Fast sweeps), so no launcher that changes summation order can match there."""
    grid = ["lr=1e-3,3e-3", "seed=0,1", "max_steps=200", "eval_every=50"]
    sweep(tmp_path / "default", *grid)
    sweep(tmp_path / "lockstep", *grid, "hydra/launcher=lockstep")
    default = {(r["config"]["lr"], r["config"]["seed"]): r for r in results(tmp_path / "default")}
    lockstep = {(r["config"]["lr"], r["config"]["seed"]): r for r in results(tmp_path / "lockstep")}
    assert sorted(default) == sorted(lockstep) and len(default) == 4
    for key, ref in default.items():
        assert abs(lockstep[key]["val/acc"] - ref["val/acc"]) <= 0.01, key
        assert abs(lockstep[key]["best_step"] - ref["best_step"]) <= 50, key


def test_cls_token_and_lu_input_layer_train_in_lockstep_as_alone(tmp_path, tiny_bert_dir) -> None:
    model = ["model=tiny_bert", f"model.path={tiny_bert_dir}", "variant=fpt", "model.pooling=cls"]
    inputs = ["model.input_init=orthogonal", "model.input_dropout=0.1"]
    assert_lockstep_equals_sequential(tmp_path, *model, *inputs)


def test_a_group_leaves_no_threads_behind(tmp_path) -> None:
    """Dropout masks are drawn on two threads here; the helper thread ends with the group."""

    def pools() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]

    before = pools()
    recipe.train(specs(tmp_path, "variant=unfrozen_random", "threads=2")[:2])
    assert pools() == before


def test_compile_is_refused_naming_the_fix(tmp_path) -> None:
    with pytest.raises(LockstepError, match="set compile=false, .*default launcher"):
        recipe.train(specs(tmp_path, "variant=unfrozen_random", "compile=true")[:2])
    assert not list(tmp_path.rglob("results.json"))


def test_random_draws_in_forward_are_refused_naming_the_default_launcher() -> None:
    class Jitter(torch.nn.Module):
        draws_random = True

    assert ImageAugment.draws_random
    runs = [tiny_model() for _ in range(2)]
    for model in runs:
        model.jitter = Jitter()
    with pytest.raises(LockstepError, match="jitter .*drop hydra/launcher=lockstep"):
        Stacked(as_runs(runs))


def test_a_layer_with_hooks_is_refused_naming_the_way_out() -> None:
    """Its hooks could not run on its stacked form (torch cannot move hooks)."""
    runs = [tiny_model() for _ in range(2)]
    runs[0].output_layer.register_forward_hook(lambda *args: None)
    with pytest.raises(LockstepError, match="hooks registered on output_layer .*default launcher"):
        Stacked(as_runs(runs))


def test_frozen_pretrained_weights_are_stored_once_and_trainable_ones_per_run(
    tiny_gpt2_dir, monkeypatch
) -> None:
    cfg = make_cfg("variant=fpt", f"model.path={tiny_gpt2_dir}")
    data = tasks.build(dict(cfg.task), cache_dir=None)
    built = []
    for seed in (0, 1):
        model = build_model(with_keys(cfg, seed=seed), data, torch.device("cpu"))
        sharing.share_frozen(model, built)
        built.append(model)
    a, b = (dict(m.named_parameters()) for m in built)
    frozen = [n for n, p in a.items() if not p.requires_grad]
    assert frozen and all(a[n].data_ptr() == b[n].data_ptr() for n in frozen)
    assert not torch.equal(a["input_layer.weight"], b["input_layer.weight"])  # own init
    stacked = Stacked(as_runs(built))
    assert stacked.model.input_layer.weight.shape[0] == 2
    assert stacked.model.backbone.h[0].attn.c_attn.weight.dim() == 2  # shared, not stacked
    assert torch.equal(stacked.model.input_layer.weight[1], b["input_layer.weight"])
    monkeypatch.setattr(sizing, "_free_memory", lambda device: 0)
    assert sizing.max_runs(built[0], 8, 16, torch.device("cpu"), frozen_shared=True) == 1
    monkeypatch.setattr(sizing, "_free_memory", lambda device: 1 << 40)
    assert sizing.max_runs(built[0], 8, 16, torch.device("cpu"), frozen_shared=True) == 64


def test_max_runs_counts_the_attention_probabilities_attention_dropout_keeps(monkeypatch) -> None:
    """At 1024 tokens (CIFAR10-LRA) the L² probabilities of SDPA's math path, which attention
    dropout forces, dominate a run's memory: fewer runs fit than without attention dropout."""
    monkeypatch.setattr(sizing, "_free_memory", lambda device: 64 << 30)
    batch, tokens, cpu = 8, 1024, torch.device("cpu")
    counts = {}
    for attn in (0.0, 0.1):
        model = tiny_model(dropout=0.1, attn_dropout=attn)
        counts[attn] = sizing.max_runs(model, batch, tokens, cpu, frozen_shared=False)
    config = model.backbone.config
    probabilities = 4 * batch * config.n_head * tokens**2 * config.n_layer  # bytes, fp32
    assert counts[0.0] == sizing.MAX_RUNS > counts[0.1]
    assert counts[0.1] * probabilities <= 0.5 * (64 << 30)


# ---- the stacked optimizer step and clipping --------------------------------------------------


def stepped(
    kind: str, stacked: bool, runs: int = 3, steps: int = 3, leaving: tuple[int, ...] = (1,)
) -> list[dict]:
    """Parameters and optimizer state of `runs` runs (lr 1e-2 · (r + 1)) after `steps` clipped
    steps on random gradients (the same for both layouts); runs `leaving` stop after the first
    step (they leave the stack: `without`)."""
    models, optimizers = [], []
    for r in range(runs):
        model = tiny_model()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * r)  # runs differ: no frozen tensor is shared
        lr = 1e-2 * (r + 1)
        params = list(model.parameters())
        if kind.startswith("adam"):
            fused = kind == "adam"  # adam_foreach: not fused, so it takes its own step
            opt = torch.optim.Adam(params, lr=lr, fused=fused, foreach=not fused)
        else:
            nesterov = kind == "nesterov"
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9 * nesterov, nesterov=nesterov,
                                  fused=True)  # fmt: skip
        models.append(model)
        optimizers.append(opt)
    run_list = as_runs(models, optimizers)
    layouts = [Stacked(run_list)] if stacked else [Single(run) for run in run_list]
    g = torch.Generator().manual_seed(0)
    live = list(range(runs))
    for step in range(steps):
        grads = [[torch.randn(p.shape, generator=g) * 3 for p in m.parameters()] for m in models]
        if stacked:
            for j, param in enumerate(layouts[0].model.parameters()):
                param.grad = torch.stack([grads[r][j] for r in live]).view(param.shape)
        else:
            for r in live:
                for param, grad in zip(models[r].parameters(), grads[r], strict=True):
                    param.grad = grad
        for layout in layouts:
            layout.clip(1.0)
        if stacked:
            layouts[0].step()
        else:
            for r in live:
                layouts[r].step()
        for layout in layouts:
            layout.zero_grad()
        if step == 0:
            if stacked:
                layouts = [layouts[0].without([run_list[r] for r in leaving])]
            live = [r for r in live if r not in leaving]
    out = []
    for model, opt in zip(models, optimizers, strict=True):
        state = {f"param {n}": p.detach().clone() for n, p in model.named_parameters()}
        for i, s in enumerate(opt.state.values()):
            state.update({f"{k} {i}": v.clone() for k, v in s.items()})
        out.append(state)
    return out


@pytest.mark.parametrize(
    ("kind", "threads"),
    [("adam", 1), ("adam", 2), ("nesterov", 1), ("sgd", 1), ("adam_foreach", 1)],
)
def test_stacked_optimizer_step_is_each_runs_own_step_bit_for_bit(kind: str, threads: int) -> None:
    """The stacked step (fused kernels called on each run's tensors, all step counters in one
    op; an unfused optimizer takes its own step) and per-run clipping equal each run's
    `clip_grad_norm_` + `optimizer.step()` exactly; a run that left the stack (run 1) does not
    update, and the others go on exactly in the stack rebuilt without it."""
    torch.set_num_threads(threads)
    alone, together = stepped(kind, stacked=False), stepped(kind, stacked=True)
    for one, many in zip(alone, together, strict=True):
        assert one.keys() == many.keys()
        for key in one:
            assert torch.equal(one[key], many[key]), key
    if kind.startswith("adam"):
        assert [s["step 0"].item() for s in together] == [3.0, 1.0, 3.0]


@pytest.mark.parametrize("kind", ["adam", "nesterov"])
def test_the_last_run_left_in_a_stack_steps_alone_exactly(kind: str) -> None:
    """Runs 1 and 2 leave after the first step: run 0 goes on as a `Single` layout, exactly."""
    alone = stepped(kind, stacked=False, leaving=(1, 2))
    together = stepped(kind, stacked=True, leaving=(1, 2))
    for one, many in zip(alone, together, strict=True):
        for key in one:
            assert torch.equal(one[key], many[key]), key


@pytest.mark.parametrize("kind", ["adam", "nesterov"])
def test_without_torchs_private_fused_kernels_each_run_takes_its_own_step(
    kind: str, monkeypatch
) -> None:
    """Where torch lacks `_fused_adam_` / `_fused_sgd_`, each run's public `optimizer.step()` on
    its gradient views gives the same bits."""
    alone = stepped(kind, stacked=False)
    monkeypatch.setattr(fused, "fused_kernels", lambda: None)
    together = stepped(kind, stacked=True)
    for one, many in zip(alone, together, strict=True):
        assert one.keys() == many.keys()
        for key in one:
            assert torch.equal(one[key], many[key]), key


def test_a_group_whose_checkpoints_exceed_the_free_disk_is_refused_before_training(
    tmp_path, monkeypatch
) -> None:
    runs = specs(tmp_path, "variant=unfrozen_random", "checkpoint_every=5")
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    need = len(runs) * checkpoint.size_estimate(model, optimizer)  # about 1.4 MB a run here
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need // 2))
    with pytest.raises(UserError, match=r"set checkpoint_every=null .*max_runs"):
        recipe.train(runs, launcher="lockstep")
    assert not [*tmp_path.rglob("results.json"), *tmp_path.rglob("checkpoint-*.pt")]
    monkeypatch.setattr(shutil, "disk_usage", real)
    recipe.train(runs, launcher="lockstep")
    assert len(list(tmp_path.rglob("results.json"))) == len(runs)

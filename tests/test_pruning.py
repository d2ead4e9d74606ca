"""Pruning lockstep groups: the rules alone, then pruned runs leaving the stack exactly."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import fake_run, make_cfg, tiny_model
from xmodal_ft import checkpoint, pruning, recipe, report, report_plots
from xmodal_ft.engine import batches
from xmodal_ft.errors import UserError
from xmodal_ft.lockstep import grouping
from xmodal_ft.pruning import Finished, GroupPruner, Halving, Median
from xmodal_ft.recipe import entry
from xmodal_ft.record.results import write_results
from xmodal_ft.runspec import RunSpec

# ---- the rules -------------------------------------------------------------------------------


def test_halving_rungs_are_first_rung_times_powers_of_eta() -> None:
    assert [p for p in range(30) if Halving(eta=3, first_rung=1).rungs(p)] == [1, 3, 9, 27]
    assert [p for p in range(30) if Halving(eta=2, first_rung=3).rungs(p)] == [3, 6, 12, 24]


def test_halving_keeps_the_best_third_at_a_rung_and_nothing_between() -> None:
    values = {1e-5: 0.2, 1e-4: 0.9, 1e-3: 0.5, 1e-2: 0.1}
    rule = Halving(eta=3)
    assert rule.prune(3, values) == {1e-5, 1e-2}  # ⌈4/3⌉ = 2 kept
    assert rule.prune(2, values) == set()  # not a rung
    assert rule.prune(1, {1e-3: 0.5}) == set()  # one LR: never pruned


def test_halving_breaks_ties_towards_the_smaller_lr() -> None:
    assert Halving(eta=2).prune(1, {1e-3: 0.5, 1e-4: 0.5}) == {1e-3}


def test_median_stops_the_lrs_below_the_median_after_the_warmup() -> None:
    values = {1e-5: 0.1, 1e-4: 0.6, 1e-3: 0.5, 1e-2: 0.3}  # median 0.4
    assert Median(warmup=2).prune(1, values) == set()
    assert Median(warmup=2).prune(2, values) == {1e-5, 1e-2}
    assert Median(warmup=1).prune(5, {1e-3: 0.9}) == set()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [({"name": "halving", "eta": 1}, "pruner.eta=1"), ({"name": "median", "warmup": 0}, "warmup")],
)
def test_bad_pruner_values_name_the_key(cfg: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        pruning.build(cfg)


def history(*accs: float, every: int = 5) -> list[dict[str, float]]:
    return [{"step": every * i, "val/acc": acc} for i, acc in enumerate(accs)]


class Member:
    """A run as a pruner sees it: its validation history, and the step it was pruned at."""

    def __init__(self, history: list[dict[str, float]]):
        self.state = SimpleNamespace(history=history)
        self.pruned_at = None


def members(lrs: list[float], histories: list[list[dict[str, float]]]) -> dict[Member, float]:
    return {Member(h): lr for lr, h in zip(lrs, histories, strict=True)}


def test_an_lr_is_judged_by_its_seed_mean_and_all_its_seeds_stop_together() -> None:
    """LR 1e-3 has the single best run (0.9) but the worse seed mean (0.5 < 0.6)."""
    lrs = [1e-3, 1e-2, 1e-3, 1e-2]
    histories = [history(0.1, 0.9), history(0.1, 0.6), history(0.1, 0.1), history(0.1, 0.6)]
    group = members(lrs, histories)
    runs = list(group)
    assert GroupPruner(Halving(eta=2), group, "acc").prune(5, runs) == [runs[0], runs[2]]


def test_the_best_so_far_counts_not_the_last_pass() -> None:
    group = members([1e-3, 1e-2], [history(0.1, 0.8, 0.2), history(0.1, 0.5, 0.6)])
    runs = list(group)
    assert GroupPruner(Median(warmup=1), group, "acc").prune(10, runs) == [runs[1]]


def test_finished_runs_keep_a_resumed_groups_decisions() -> None:
    """LR 1e-4 was pruned at step 5; a group resumed without its runs decides at step 5 as the
    uninterrupted group did (1e-4 out, 1e-3 and 1e-2 on), and leaves 1e-4 out at step 10."""
    histories = [history(0.1, 0.1), history(0.1, 0.5), history(0.1, 0.6)]
    full = members([1e-4, 1e-3, 1e-2], histories)
    assert GroupPruner(Halving(eta=2), full, "acc").prune(5, list(full)) == [list(full)[0]]
    gone = [Finished(1e-4, histories[0], pruned_at=5)]
    rest = members([1e-3, 1e-2], histories[1:])
    runs = list(rest)
    resumed = GroupPruner(Halving(eta=2), rest, "acc", gone)
    assert resumed.prune(5, runs) == []
    without = GroupPruner(Halving(eta=2), rest, "acc")
    assert without.prune(5, runs) == [runs[0]]  # what the finished runs prevent
    for run, later in zip(runs, [history(0.1, 0.5, 0.7), history(0.1, 0.6, 0.65)], strict=True):
        run.state.history = later
    assert resumed.prune(10, runs) == [runs[1]]  # 1e-4 (best 0.1) no longer in the group


def test_a_run_that_stopped_early_is_not_pruned_but_counts() -> None:
    group = members([1e-3, 1e-2, 1e-4], [history(0.1, 0.2), history(0.1, 0.9), history(0.1, 0.3)])
    runs = list(group)
    pruner = GroupPruner(Halving(eta=3), group, "acc")
    assert pruner.prune(5, runs[1:]) == [runs[2]]  # run 0 stopped on its own


# ---- lockstep groups with a pruner -----------------------------------------------------------

LRS = [1e-4, 1e-3, 3e-2]
SEEDS = [0, 1]
STEPS = ["max_steps=20", "eval_every=5", "checkpoint_every=null", "threads=1"]
PRUNER = ["pruner=halving", "pruner.eta=2"]  # rungs at passes 1 and 2: steps 5 and 10


def grid(root: Path, *overrides: str) -> list[RunSpec]:
    """3 LRs × 2 seeds, seeds contiguous as `groups` orders them."""
    return [
        RunSpec(make_cfg(*STEPS, *overrides, f"lr={lr}", f"seed={s}"), root / f"lr={lr},seed={s}")
        for s in SEEDS
        for lr in LRS
    ]


def results(spec: RunSpec) -> dict:
    return json.loads((spec.run_dir / "results.json").read_text())


SAME = ("val/acc", "test/acc", "best_step", "steps", "history")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[int]]:
    """The grid trained in lockstep with the pruner, each step's number of runs computed."""
    root = tmp_path_factory.mktemp("pruned")
    rows = []
    batch = batches.of_runs

    def counting(split, idxs, device):
        rows.append(len(idxs))
        return batch(split, idxs, device)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batches, "of_runs", counting)
        recipe.train(grid(root, "variant=unfrozen_random", *PRUNER), launcher="lockstep")
    return root, [results(s) for s in grid(root)], rows


def test_pruned_runs_leave_the_stack_and_the_others_equal_their_lone_runs(tmp_path, pruned) -> None:
    """Halving with eta 2 stops one LR at step 5 and one at step 10 (both seeds each): the steps
    after compute 4, then 2 runs. A run never pruned gives its lone run's results bit for bit; a
    pruned run gives its lone run's results up to its pruning step (a lone run of that budget)."""
    root, found, rows = pruned
    assert rows == [6] * 5 + [4] * 5 + [2] * 10
    by_lr = [[r.get("pruned_at") for r in found if r["config"]["lr"] == lr] for lr in LRS]
    assert sorted(by_lr, key=str) == [[10, 10], [5, 5], [None, None]]  # seeds pruned together
    for spec, result in zip(grid(tmp_path, "variant=unfrozen_random"), found, strict=True):
        budget = result.get("pruned_at") or 20
        alone = spec.cfg.copy()
        alone.max_steps = budget
        recipe.train([RunSpec(alone, spec.run_dir)])
        lone = results(spec)
        assert [result[k] for k in SAME] == [lone[k] for k in SAME]
        assert result.get("pruned", False) == (budget < 20) and "pruned" not in lone
        assert not result["stopped_early"]


def test_a_resumed_group_neither_retrains_nor_resurrects_its_pruned_runs(tmp_path, pruned) -> None:
    """Killed after step 5 (its pruned runs' results written, no checkpoints): the relaunch skips
    them, and their histories keep the later decisions (step 10) those of the whole group."""
    root, found, _ = pruned
    specs = grid(tmp_path, "variant=unfrozen_random", *PRUNER)
    for spec, result in zip(specs, found, strict=True):
        if result.get("pruned_at") == 5:
            spec.run_dir.mkdir(parents=True)
            shutil.copy(root / spec.run_dir.name / "results.json", spec.run_dir)
    (members,) = grouping.groups(specs)
    recipe.train([specs[i] for i in members], launcher="lockstep")
    for spec, result in zip(specs, found, strict=True):
        again = results(spec)
        assert [again[k] for k in SAME] == [result[k] for k in SAME]
        assert again.get("pruned_at") == result.get("pruned_at")


def test_a_lone_run_with_a_pruner_is_not_pruned(tmp_path, caplog) -> None:
    spec = grid(tmp_path, "variant=unfrozen_random", *PRUNER)[0]
    recipe.train([spec])
    assert "pruned" not in results(spec) and results(spec)["steps"] == 20
    assert "a lone run is not pruned" in caplog.text


def test_a_finished_runs_pruned_lr_stops_its_later_seeds_at_that_pass() -> None:
    """Seed 0 of LR 1e-2 was pruned at step 5 in an earlier chunk: its seed 1, training now,
    stops at step 5 too, though its own value would keep it."""
    histories = [history(0.1, 0.9), history(0.1, 0.5)]
    rest = members([1e-2, 1e-3], histories)
    runs = list(rest)
    gone = [Finished(1e-2, history(0.1, 0.1), pruned_at=5), Finished(1e-3, history(0.1, 0.5))]
    assert GroupPruner(Median(warmup=3), rest, "acc", gone).prune(5, runs) == [runs[0]]


# ---- groups larger than max_runs -------------------------------------------------------------


def split_grid(root: Path) -> list[RunSpec]:
    """The pruned grid as the launcher hands it to the recipe: one group, in its order."""
    specs = grid(root, "variant=unfrozen_random", *PRUNER)
    (members,) = grouping.groups(specs)
    return [specs[i] for i in members]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The pruned grid trained with at most 4 runs at once: chunks of 2 LRs, then 1."""
    specs = split_grid(tmp_path_factory.mktemp("split"))
    recipe.train(specs, launcher="lockstep", max_runs=4)
    return [results(spec) for spec in specs]


def test_a_group_split_by_max_runs_judges_each_lr_on_all_its_seeds(split) -> None:
    """Every LR's seeds stop at one pass. The first chunk (LRs 1e-4, 1e-3) keeps 1 of its 2
    LRs at step 5; the second chunk's LR, alone in its chunk (a lone LR is never pruned), is
    judged with the first chunk's: 2 of the 3 LRs stay at step 5, and it is not among them."""
    by_lr = {lr: {r.get("pruned_at") for r in split if r["config"]["lr"] == lr} for lr in LRS}
    assert all(len(steps) == 1 for steps in by_lr.values()), by_lr
    assert by_lr[3e-2] == {5} and sorted([*by_lr[1e-4], *by_lr[1e-3]], key=str) == [5, None]


def test_a_split_group_killed_between_chunks_prunes_as_the_uninterrupted_one(
    tmp_path, split, monkeypatch
) -> None:
    """The process dies as its second chunk starts; the relaunch trains that chunk and prunes
    it as the uninterrupted sweep did, the first chunk's runs untouched."""

    class Killed(Exception):
        pass

    chunks: list[int] = []

    class DiesAtTheSecondChunk(entry.GroupRecipe):
        def setup(self) -> None:
            chunks.append(len(self.specs))
            if len(chunks) == 2:
                raise Killed
            super().setup()

    specs = split_grid(tmp_path)
    monkeypatch.setattr(entry, "GroupRecipe", DiesAtTheSecondChunk)
    with pytest.raises(Killed):
        recipe.train(specs, launcher="lockstep", max_runs=4)
    monkeypatch.undo()
    assert chunks == [4, 2] and sum((s.run_dir / "results.json").exists() for s in specs) == 4
    recipe.train(specs, launcher="lockstep", max_runs=4)
    for spec, result in zip(specs, split, strict=True):
        again = results(spec)
        assert [again[k] for k in SAME] == [result[k] for k in SAME]
        assert again.get("pruned_at") == result.get("pruned_at")


def test_max_runs_below_the_seeds_of_an_lr_says_so_and_stops_the_seeds_together(
    tmp_path, caplog
) -> None:
    specs = split_grid(tmp_path)
    recipe.train(specs, launcher="lockstep", max_runs=1)
    assert "max_runs=1 < 2 seeds of an LR" in caplog.text
    found = [results(spec) for spec in specs]
    for lr in LRS:
        assert len({r.get("pruned_at") for r in found if r["config"]["lr"] == lr}) == 1


def test_under_a_pruner_a_config_is_one_group_wherever_its_runs_start(tmp_path) -> None:
    """A finished run, one resuming at step 4 and fresh ones: one group under a pruner (the
    recipe then cuts the same chunks as at the first launch), three without."""
    for pruner in ([], PRUNER):
        specs = grid(tmp_path / str(len(pruner)), "variant=unfrozen_random", *pruner)
        write_results(specs[0].run_dir, {"status": "complete", "config": specs[0].config,
                                         "config_hash": specs[0].config_hash})  # fmt: skip
        model = tiny_model()
        optimizer = torch.optim.Adam(model.parameters(), fused=True)
        checkpoint.save(specs[1].checkpoint_file, checkpoint.LoopState(step=4), model, optimizer)
        assert len(grouping.groups(specs)) == (1 if pruner else 3)


# ---- the report ------------------------------------------------------------------------------


def pruned_run(root: Path, lr: float, seed: int, val: float, test: float, at: int) -> None:
    run_dir = fake_run(root, lr, seed, val, test)
    payload = json.loads((run_dir / "results.json").read_text())
    write_results(run_dir, {**payload, "pruned": True, "pruned_at": at})


def test_the_report_chooses_among_unpruned_lrs_and_says_which_it_left_out(tmp_path, caplog) -> None:
    """LR 1e-2 has the best mean validation metric but was pruned (as no real pruner would
    leave it, which is the point: the report never picks it, and says it left it out)."""
    for seed in (0, 1):
        fake_run(tmp_path, 1e-4, seed, 0.5, 0.4)
        fake_run(tmp_path, 1e-3, seed, 0.6, 0.55)
        pruned_run(tmp_path, 1e-2, seed, 0.9, 0.9, at=100)
    [sel] = report.aggregate(report.load_runs([tmp_path])[0])
    assert sel.best.lr == 1e-3 and sel.excluded == {1e-2: (100,)}
    assert [p.pruned for p in sel.per_lr] == [False, False, True]
    caplog.set_level(logging.INFO)
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| mnist | 55.0 ± 0.0 (lr 1e-03) † |" in md
    assert "## Pruned runs" in md and "- mnist / gpt2 / fpt / fixed: lr 1e-02 (step 100)" in md
    rows = list(csv.DictReader((tmp_path / "report" / "results_per_lr.csv").open()))
    assert [(r["lr"], r["chosen"], r["pruned"]) for r in rows] == [
        ("0.0001", "0", "0"), ("0.001", "1", "0"), ("0.01", "0", "1"),
    ]  # fmt: skip
    assert "pruned lr 1e-02 left out of the choice" in caplog.text


def test_the_lr_plot_crosses_out_the_pruned_lrs(tmp_path, monkeypatch) -> None:
    for seed in (0, 1):
        fake_run(tmp_path, 1e-3, seed, 0.6, 0.55)
        pruned_run(tmp_path, 1e-2, seed, 0.9, 0.9, at=100)
    figures = []
    monkeypatch.setattr(report_plots, "_save", lambda fig, path: figures.append(fig) or path)
    report_plots.lr_curves(report.aggregate(report.load_runs([tmp_path])[0]), tmp_path)
    for ax in figures[0].axes:
        (cross,) = [c for c in ax.collections if c.get_label() == "pruned (not chosen from)"]
        assert cross.get_offsets().tolist() == [[1e-2, 0.9]]


def test_a_report_without_pruned_runs_has_no_mark(tmp_path) -> None:
    fake_run(tmp_path, 1e-3, 0, 0.6, 0.55)
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "†" not in md and "Pruned" not in md


def test_an_lr_whose_seeds_were_pruned_at_different_steps_is_named(tmp_path, caplog) -> None:
    for seed in (0, 1):
        fake_run(tmp_path, 1e-3, seed, 0.6, 0.55)
    pruned_run(tmp_path, 1e-2, 0, 0.9, 0.9, at=100)
    fake_run(tmp_path, 1e-2, 1, 0.9, 0.9)
    [sel] = report.aggregate(report.load_runs([tmp_path])[0])
    assert sel.best.lr == 1e-3 and sel.uneven == {1e-2: ((0, 100), (1, None))}
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "lr 1e-02: seeds pruned at different steps (seed 0 at step 100, seed 1 not pruned)" in md
    assert "its seeds were pruned at different steps" in caplog.text


def test_where_every_lr_was_pruned_the_report_says_so_and_takes_the_last_pruned(
    tmp_path, caplog
) -> None:
    """1e-2 has the best validation metric but was pruned first: the choice is among the LRs
    pruned last (step 200), and the report says it is no full-budget run."""
    for seed in (0, 1):
        pruned_run(tmp_path, 1e-4, seed, 0.5, 0.4, at=200)
        pruned_run(tmp_path, 1e-3, seed, 0.6, 0.55, at=200)
        pruned_run(tmp_path, 1e-2, seed, 0.9, 0.9, at=100)
    [sel] = report.aggregate(report.load_runs([tmp_path])[0])
    assert sel.all_pruned and sel.best.lr == 1e-3
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "every LR was pruned: lr 1e-03 is the best of the LRs pruned last" in md
    assert "a pruner stopped every LR" in caplog.text

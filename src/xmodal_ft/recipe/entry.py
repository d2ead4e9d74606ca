"""The recipe's entry points: `run` (one configuration, as train.py calls it) and `train` (runs
of one configuration together, as the lockstep launcher calls it). DictConfig stops here."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import mean
from typing import Any, TypeVar

from omegaconf import DictConfig

from xmodal_ft import engine, hub, lease, logs, once, pruning, runspec, tasks, trial_pruning
from xmodal_ft.recipe.building import build_model
from xmodal_ft.recipe.checks import check, plain
from xmodal_ft.recipe.group import GroupRecipe
from xmodal_ft.runspec import RunSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(
    cfg: DictConfig,
    run_dir: Path | str,
    choices: Mapping[str, Any] | None = None,
    *,
    sweep: str | None = None,
    name: str | None = None,
) -> float:
    """Train and evaluate one configuration; write results.json; return the validation metric.

    Everything that needs no data is checked first (`check`). A run whose `run_dir` already
    holds complete results of the same config is skipped; one with a checkpoint continues from
    it. With `seeds: [..]`, each seed trains in `run_dir/seed_<s>` and the mean validation
    metric is returned (one Optuna trial = the mean over seeds).
    `sweep` and `name` label the run for trackers (W&B group = the sweep, name = the overrides).
    """
    logs.quiet()
    check(cfg)
    specs = runspec.of_config(cfg, run_dir, choices, sweep=sweep, name=name)
    if trial_pruning.judged_together(cfg):  # an Optuna trial's pruner judges its seeds at once
        values = train(specs)
    else:
        values = [train([spec])[0] for spec in specs]
    if cfg.get("seeds"):
        log.info("mean validation metric over seeds %s: %.4f", list(cfg.seeds), mean(values))
    return mean(values)


def train(
    specs: Sequence[RunSpec],
    launcher: str | None = None,
    max_runs: int | None = None,
    memory_share: float = 1.0,
) -> list[float]:
    """Train runs of one configuration (they may differ in lr and seed) together, in lockstep;
    return each run's validation metric. Runs whose directory holds complete results of the same
    config are skipped; runs whose lease (`xmodal_ft.lease`) a live worker holds are waited for
    and their value read from that worker's results (`xmodal_ft.once`). At most `max_runs` train
    at once (None: `lockstep.sizing.max_runs`, from the model, the batch shape and this process's
    `memory_share` of the device's free memory); `launcher` is recorded in results.json."""
    logs.quiet()
    values: dict[int, float] = {}
    earlier: dict[int, pruning.Finished] = {}  # the finished runs, for a pruner

    def finished(i: int) -> float | None:
        return values[i] if _done(specs[i], values, i, earlier) else None

    def train_held(todo: list[int]) -> list[float]:
        _train_leased(specs, todo, values, launcher, max_runs, memory_share, earlier)
        return [values[i] for i in todo]

    return once.train([spec.run_dir for spec in specs], finished, train_held)


def _done(
    spec: RunSpec, values: dict[int, float], i: int, earlier: dict[int, pruning.Finished]
) -> bool:
    """Whether the run's directory holds complete results of its config (its value then goes
    into `values[i]`, its history into `earlier[i]`)."""
    done = spec.finished()
    if done is None:
        return False
    log.info("%s holds complete results of this config: skipped", spec.run_dir)
    values[i] = done[f"val/{done['metric']}"]
    earlier[i] = pruning.Finished(spec.cfg.lr, done["history"], done.get("pruned_at"))
    return True


def _train_leased(
    specs: Sequence[RunSpec],
    todo: list[int],
    values: dict[int, float],
    launcher: str | None,
    max_runs: int | None,
    memory_share: float,
    earlier: dict[int, pruning.Finished],
) -> None:
    """Train the runs `todo` of `specs` (their leases held), in chunks of at most `max_runs`,
    one after another; a chunk's pruner judges its runs with the finished runs of the chunks up
    to it (`earlier`, which each chunk's runs join as they finish)."""
    cfg = specs[todo[0]].cfg
    device = engine.select_device(cfg.device)
    tokenizer = hub.resolve_path(cfg.model.path) if cfg.model.path else None
    with lease.starting():  # data building reports no progress of its own
        data = tasks.build(plain(cfg.task), cache_dir=cfg.cache_dir, tokenizer=tokenizer)
    pruned = _pruned(cfg)
    if max_runs is None and len(specs if pruned else todo) > 1:  # a pruned group: its cut
        from xmodal_ft.lockstep import sizing  # groups only

        with lease.starting():
            model = build_model(cfg, data, device)
        pretrained = bool(cfg.variant.pretrained)
        max_runs = sizing.max_runs(
            model, cfg.batch_size, data.spec.seq_len, device, pretrained, memory_share
        )
        log.info("lockstep: at most %d runs at once (lockstep.sizing.max_runs)", max_runs)
        del model
    cut = _pruned_chunks(specs, max_runs or 1) if pruned else chunks(todo, max_runs or 1)
    for k, chunk in enumerate(cut):
        mine = [i for i in chunk if i in todo]
        if not mine:
            continue
        seen = [earlier[i] for c in cut[: k + 1] for i in c if i in earlier]
        recipe = GroupRecipe([specs[i] for i in mine], data, device, launcher, seen)
        try:
            recipe.setup()
            values.update(zip(mine, recipe.train(), strict=True))
            earlier.update(zip(mine, recipe.finished(), strict=True))
        finally:
            recipe.cleanup()


def _pruned(cfg: DictConfig) -> bool:
    """Whether a pruner judges the group's runs (`pruner=...`, or an Optuna trial's)."""
    return cfg.get("pruner") is not None or trial_pruning.judged_together(cfg)


def _pruned_chunks(specs: Sequence[RunSpec], limit: int) -> list[list[int]]:
    """A pruned group's chunks of at most `limit` runs, cut from the whole group (finished runs
    included, so a relaunch cuts the same chunks) in (lr, seed) order, each LR's seeds in one
    chunk where they fit: the pruner judges an LR on all its seeds, and chunk k's runs together
    with those of chunks 0..k (`_train_leased`)."""
    by_lr: dict[float, list[int]] = {}
    for i in sorted(range(len(specs)), key=lambda i: (specs[i].cfg.lr, specs[i].cfg.seed)):
        by_lr.setdefault(float(specs[i].cfg.lr), []).append(i)
    seeds = max(len(runs) for runs in by_lr.values())
    if len(specs) > limit and limit < seeds:
        log.warning(
            "max_runs=%d < %d seeds of an LR: the pruner judges an LR on the seeds trained so "
            "far, and its later seeds stop where the first were pruned (hydra.launcher.max_runs"
            " >= %d judges all seeds together)", limit, seeds, seeds,
        )  # fmt: skip
        return chunks([i for runs in by_lr.values() for i in runs], limit)
    return [
        [i for runs in lrs for i in runs]
        for lrs in chunks(list(by_lr.values()), max(1, limit // seeds))
    ]


def chunks(items: list[T], limit: int) -> list[list[T]]:
    """`items` in order, cut into the fewest near-equal chunks of at most `limit`."""
    count = -(-len(items) // limit)
    size, extra = divmod(len(items), count)
    cuts = [0]
    for i in range(count):
        cuts.append(cuts[-1] + size + (i < extra))
    return [items[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]

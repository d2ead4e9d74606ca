"""A group recipe: runs of one configuration (they may differ in lr and seed) trained together,
in torchtune's recipe shape: `setup()` builds each run and decides, once, where it starts;
`train()` trains the runs (a run writes its results as soon as it finishes); `cleanup()`."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from typing import Any

import torch

from xmodal_ft import (
    allocator,
    checkpoint,
    engine,
    lease,
    models,
    papers,
    pruning,
    schemes,
    threads,
    trial_pruning,
)
from xmodal_ft.engine.layout import layout_of
from xmodal_ft.engine.run import RandomStream, Run
from xmodal_ft.errors import DEFAULT_LAUNCHER, LockstepError, UserError
from xmodal_ft.recipe.banner import banner
from xmodal_ft.recipe.building import build_model, fit_settings
from xmodal_ft.recipe.checks import plain
from xmodal_ft.record import trackers
from xmodal_ft.runspec import RunSpec
from xmodal_ft.tasks.base import TaskData

log = logging.getLogger(__name__)


class GroupRecipe:
    """The runs of `specs` on `data` and `device`; `launcher` is recorded in results.json;
    `earlier` are the group's runs that finished before (a pruner judges them too)."""

    def __init__(
        self,
        specs: Sequence[RunSpec],
        data: TaskData,
        device: torch.device,
        launcher: str | None = None,
        earlier: Sequence[pruning.Finished] = (),
    ):
        self.specs, self.data, self.device = list(specs), data, device
        self.launcher, self.earlier = launcher, list(earlier)
        self.cfg = self.specs[0].cfg
        self.metric = data.spec.metrics[0]
        self.runs: list[Run] = []
        self.started = time.time()
        self.thread_count = 0

    def setup(self) -> None:
        """Build each run (model, variant, scheme, random stream), resume it from its checkpoint
        when it has one that fits, then set the threads and open the runs' trackers."""
        cfg = self.cfg
        if len(self.specs) > 1 and cfg.grad_checkpointing:  # recomputed dropout would redraw
            raise LockstepError(f"grad_checkpointing=true: {DEFAULT_LAUNCHER}")
        if len(self.specs) > 1 and cfg.compile:  # untested over stacked layers and run streams
            raise LockstepError(f"compile=true: set compile=false, or {DEFAULT_LAUNCHER}")
        steps_per_epoch = len(self.data.train) // cfg.batch_size
        settings = [fit_settings(spec.cfg, steps_per_epoch) for spec in self.specs]
        first = self.specs[0]
        if first.sweep is not None or (first.choices or {}).get("experiment"):  # sweep or preset
            papers.warn_if_short(
                cfg.task.name, settings[0].max_steps, cfg.batch_size, self.data.full_train_size
            )
        for spec, fit_cfg in zip(self.specs, settings, strict=True):
            self.runs.append(self._build(spec, fit_cfg, settings[0].max_steps))
        starts = [run.resume() for run in self.runs]
        if len(set(starts)) > 1:  # a checkpoint that reads but does not fit: its run is afresh
            log.warning("runs resume at steps %s: each step's runs train as a group of their own",
                        starts)  # fmt: skip
        counts = [run.state.threads for run in self.runs if run.state.threads]
        self.thread_count = threads.set_threads(cfg.threads, resumed=counts)
        allocator.keep_freed_memory()
        _check_checkpoint_space(self.runs)
        tags = [str(cfg[g].name) for g in ("task", "model", "variant", "scheme")]
        for run in self.runs:
            spec = run.spec
            meta = {"run_dir": spec.run_dir, "config": spec.config, "sweep": spec.sweep,
                    "name": spec.name, "tags": tags, "start_step": run.state.step}  # fmt: skip
            run.tracker = trackers.build_tracker(plain(cfg.logger), spec.run_dir, meta)

    def _build(self, spec: RunSpec, settings: engine.FitConfig, total_steps: int) -> Run:
        with lease.starting():  # model loading reports no progress of its own
            model = build_model(spec.cfg, self.data, self.device)
        scheme = schemes.SchemeConfig(**plain(spec.cfg.scheme))
        plan = schemes.build(model, scheme, lr=spec.cfg.lr, total_steps=total_steps)
        stream = RandomStream()  # what this run's dropout starts from, as its lone run's
        if self.runs:  # frozen weights equal to an earlier run's are stored once
            from xmodal_ft.lockstep.sharing import share_frozen

            share_frozen(model, [run.model for run in self.runs])
        path = spec.checkpoint_file if spec.cfg.checkpoint_every else None
        return Run(model, plan, settings, stream, checkpoint_path=path, spec=spec)

    def train(self) -> list[float]:
        """Train the runs, those resuming at one step as one stack, and write each run's results
        as it finishes; return each run's best validation metric, in `specs`' order."""
        for start in sorted({run.state.step for run in self.runs}):
            self._train([run for run in self.runs if run.state.step == start])
        return [run.result.best_val[self.metric] for run in self.runs]

    def _train(self, runs: list[Run]) -> None:
        layout = layout_of(runs)
        try:
            cfg = self.cfg
            models.speed_up(layout.model, grad_checkpointing=cfg.grad_checkpointing,
                            compile=cfg.compile)  # fmt: skip
            specs = [run.spec for run in runs]
            params, max_steps = runs[0].plan.params, runs[0].settings.max_steps
            log.info("%s", banner(specs, self.data, params, self.device, max_steps))
            for run in engine.train(layout, self.data, self.pruner(runs)):
                self._finish(run)
        finally:
            layout.close()

    def pruner(self, runs: Sequence[Run]) -> pruning.Pruner | None:
        """The pruner of a lockstep group (`pruner=<rule>`), handed to the loop: the one place a
        group's pruner is built (`pruning.Pruner` says what it is asked); an Optuna trial's
        runs get its trial's pruner (`trial_pruning`)."""
        if trial_pruning.judged_together(self.cfg):
            return trial_pruning.pruner(runs, self.metric, self.earlier)
        if self.cfg.get("pruner") is None:
            return None
        if len(runs) + len(self.earlier) == 1:
            log.warning("pruner=%s prunes lockstep groups: a lone run is not pruned",
                        self.cfg.pruner.name)  # fmt: skip
            return None
        rule = pruning.build(plain(self.cfg.pruner))
        lrs = {run: float(run.spec.cfg.lr) for run in runs}
        return pruning.GroupPruner(rule, lrs, self.metric, self.earlier)

    def finished(self) -> list[pruning.Finished]:
        """The runs, trained, as a later chunk's pruner judges them (in `specs`' order)."""
        return [
            pruning.Finished(float(run.spec.cfg.lr), run.result.history, run.result.pruned_at)
            for run in self.runs
        ]

    def _finish(self, run: Run) -> None:
        """A run has finished: its summary to its tracker, its results.json written."""
        payload = self._payload(run)
        run.tracker.summary(payload)
        run.write_results(payload)
        test = run.result.test[self.metric]
        log.info("test %s = %.4f (results in %s)", self.metric, test, run.spec.run_dir)

    def _payload(self, run: Run) -> dict[str, Any]:
        result, spec = run.result, run.spec
        payload = {
            "status": "complete",
            "config": spec.config,
            "config_hash": spec.config_hash,
            "choices": dict(spec.choices or {}),
            "params": run.plan.params,
            "metric": self.metric,
            **{f"val/{k}": v for k, v in result.best_val.items()},
            **{f"test/{k}": v for k, v in result.test.items()},
            "test_examples": len(self.data.test),
            "best_step": result.best_step,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "history": result.history,
            "train_seconds": result.train_seconds,
            "val_seconds": result.val_seconds,
            "wall_seconds": time.time() - self.started,
            "threads": self.thread_count,
            "device": str(self.device),
            "host": platform.node(),
            "pid": os.getpid(),
            "torch": torch.__version__,
        }
        if result.pruned_at is not None:
            payload |= {"pruned": True, "pruned_at": result.pruned_at}
        if self.launcher is not None:
            payload["launcher"] = self.launcher
        return payload

    def cleanup(self) -> None:
        """Close the runs' trackers (W&B runs finish)."""
        for run in self.runs:
            if run.tracker is not None:
                run.tracker.close()


def _check_checkpoint_space(runs: Sequence[Run]) -> None:
    """Refuse runs whose checkpoints would not fit on the disk (they would fail at the first
    one, losing the training done): a lockstep group of unfrozen models writes one per run."""
    keeping = [run for run in runs if run.checkpoint_path is not None]
    if not keeping:
        return
    sizes = [checkpoint.size_estimate(run.model, run.plan.optimizer) for run in keeping]
    folder = keeping[0].checkpoint_path.parent
    while not folder.exists():
        folder = folder.parent
    need, free = sum(sizes) + max(sizes), shutil.disk_usage(folder).free  # + one file in writing
    if need > free:
        raise UserError(
            f"the checkpoints of {len(sizes)} run(s) need about {need / 2**30:.1f} GiB in "
            f"{folder}, which has {free / 2**30:.1f} GiB free: set checkpoint_every=null (a "
            f"killed run then restarts from scratch) or train fewer runs at once "
            f"(hydra.launcher.max_runs=N)"
        )

"""The training loop: plain PyTorch, top to bottom, for one run or R runs of one configuration
trained together. Knows nothing of Hydra, tasks or variants.

Each step, in nanoGPT's order: save the runs' checkpoints when due; every `eval_every` steps
score each run on validation (best weights kept, early stopping, the pruner's say), and let the
runs that stop leave; draw each run's batch; set each run's LR from its schedule; forward the
runs' batches as one, backward, clip, step, free the gradients; log the train loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from xmodal_ft.engine import batches, evaluation
from xmodal_ft.engine.device import autocast
from xmodal_ft.engine.layout import Layout, Single
from xmodal_ft.engine.plan import FitConfig, FitResult, TrainPlan, enter_epoch
from xmodal_ft.engine.run import Run
from xmodal_ft.errors import DEFAULT_LAUNCHER, LockstepError
from xmodal_ft.tasks.base import TaskData, subsample

if TYPE_CHECKING:
    from xmodal_ft.pruning import Pruner
    from xmodal_ft.record.trackers import Tracker

log = logging.getLogger(__name__)


def fit(
    model: nn.Module,
    plan: TrainPlan,
    data: TaskData,
    cfg: FitConfig,
    tracker: Tracker | None = None,
    checkpoint_path: Path | None = None,
) -> FitResult:
    """Train one run with early stopping on validation; test with the best-validation weights.

    With `checkpoint_path`, the loop state is saved there every `cfg.checkpoint_every` steps and,
    when the file exists at the start, training continues from it with identical results (an
    unreadable file is reported and training starts afresh).
    """
    run = Run(model, plan, cfg, tracker=tracker, checkpoint_path=checkpoint_path)
    run.resume()
    for _ in train(Single(run), data):
        pass
    assert run.result is not None
    return run.result


def train(layout: Layout, data: TaskData, pruner: Pruner | None = None) -> Iterator[Run]:
    """Train the runs of `layout` together, each exactly as `fit` trains it alone; yield each
    run as soon as it has finished (tested with its best weights, `run.result` set).

    Runs share the loop settings and differ in seed (data order) and plan (LR, optimizer state);
    each has its own clipping, validation, early stopping, best weights, checkpoint and tracker.
    A run that stops (early stopping, or `pruner` stopping it after a validation pass) leaves
    the layout (`layout.without`): the steps after compute only the runs still training. All
    runs resume from the same step (`run.resume()` before). The caller closes `layout`.
    """
    loop = _Loop(layout, data, pruner)
    try:
        yield from loop.leave([run for run in loop.live if run.state.stopped_at is not None])
        for step in range(loop.first_step, loop.cfg.max_steps + 1):
            for run in loop.live:
                run.state.step = step
            if loop.checkpoint_due(step):
                loop.save_checkpoints()
            if step % loop.cfg.eval_every == 0 or step == loop.cfg.max_steps:
                yield from loop.validate(step)
            if step == loop.cfg.max_steps or not loop.live:
                break
            loop.train_step(step)
            if (step + 1) % loop.cfg.log_every == 0:
                loop.log_train_loss(step + 1)
        loop.bar.close()
        yield from loop.test(loop.live)
    finally:
        loop.close()


class _Loop:
    """The loop's own state: the runs still training and their layout, the train-loss sums,
    each run's batches, the clock and the progress bar."""

    def __init__(self, layout: Layout, data: TaskData, pruner: Pruner | None):
        self.given = self.layout = layout
        self.live = list(layout.runs)
        self.cfg = _shared(self.live)
        self.loss_fn = _shared_loss(self.live)
        self.data, self.pruner, self.metric = data, pruner, data.spec.metrics[0]
        self.val = subsample(data.val, self.cfg.val_subset, seed=0)
        self.device = next(layout.model.parameters()).device
        self.first_step = self.live[0].state.step
        if any(run.state.step != self.first_step for run in self.live):
            raise ValueError("lockstep runs must resume from the same step; train them apart")
        self.group = len(self.live) > 1
        for run in self.live:
            run.state.threads = torch.get_num_threads()  # what its checkpoints record from now on
        self.start = time.perf_counter()
        self.seconds = {run: run.state.seconds for run in self.live}  # before this call
        sums = [float(run.state.loss_sum) for run in self.live]
        self.loss_sums = torch.tensor(sums, device=self.device)
        self.loss_count = self.live[0].state.loss_count
        size, first = self.cfg.batch_size, self.first_step
        self.batches = {run: batches.shuffled(data.train, size, run.settings.seed, first)
                        for run in self.live}  # fmt: skip
        layout.model.train()
        self.bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.first_step,
            disable=not self.cfg.progress,
            desc="train" if not self.group else f"train {len(self.live)} runs",
            dynamic_ncols=True,
        )

    def clock(self, run: Run) -> float:
        """The run's training time so far."""
        return self.seconds[run] + time.perf_counter() - self.start

    def progress(self) -> None:
        for run in self.live:
            run.progress()

    def checkpoint_due(self, step: int) -> bool:
        """A checkpoint is written every `checkpoint_every` steps, before that step's evaluation."""
        every = self.cfg.checkpoint_every
        return bool(every) and self.first_step < step < self.cfg.max_steps and step % every == 0

    def save_checkpoints(self) -> None:
        for i, run in enumerate(self.live):
            if run.checkpoint_path is not None:
                run.state.seconds = self.clock(run)
                run.state.loss_sum, run.state.loss_count = self.loss_sums[i], self.loss_count
                run.save_checkpoint()

    def validate(self, step: int) -> Iterator[Run]:
        """Score every run on validation; the runs that stop now leave (and are yielded)."""
        val_start = time.perf_counter()
        scores = evaluation.validation_scores(
            self.layout, step, self.val, self.data.spec.metrics, self.cfg, self.progress
        )
        val_seconds = time.perf_counter() - val_start
        for run, score in zip(self.live, scores, strict=True):
            run.state.val_seconds += val_seconds
            _validated(run, score, self.metric, self.cfg)
        training = [run for run in self.live if run.state.stopped_at is None]
        if self.pruner is not None and training and step < self.cfg.max_steps:
            for run in self.pruner.prune(step, training):
                run.pruned_at = step
        best = max(run.state.best_val[self.metric] for run in self.live)
        self.bar.set_postfix({f"best_val_{self.metric}": f"{best:.3f}"}, refresh=False)
        gone = [r for r in self.live if r.state.stopped_at is not None or r.pruned_at is not None]
        if gone and step < self.cfg.max_steps:
            yield from self.leave(gone)

    def leave(self, gone: list[Run]) -> Iterator[Run]:
        """Test the runs `gone` with their best weights, one by one, and take them out."""
        if not gone:
            return
        for run in gone:
            yield from self.test([run], run.model)
        kept = [i for i, run in enumerate(self.live) if run not in gone]
        self.live = [self.live[i] for i in kept]
        self.loss_sums = self.loss_sums[kept]
        if self.live:
            self.layout = self.layout.without(gone)
            self.layout.model.train()

    def test(self, runs: list[Run], model: nn.Module | None = None) -> Iterator[Run]:
        """Score `runs` on test with their best weights, by `model` (the layout's by default)."""
        if not runs:
            return
        for run in runs:
            run.state.seconds = self.clock(run)
        for run in runs:
            _restore(run.model, run.state.best_weights)
        tests = evaluation.evaluate_runs(
            self.layout.model if model is None else model, len(runs), self.data.test,
            self.data.spec.metrics, self.cfg, "test", self.progress,
        )  # fmt: skip
        for run, test in zip(runs, tests, strict=True):
            run.result = _result(run, test, self.metric, self.group)
            yield run

    def train_step(self, step: int) -> None:
        """One optimizer step of every run still training."""
        live = self.live
        drawn = [next(self.batches[run]) for run in live]
        if drawn[0][0] != live[0].state.epoch:
            for run in live:
                run.state.epoch = drawn[0][0]
                enter_epoch(run.plan, run.state.epoch)
        self.scales = [run.plan.lr_scale(step) for run in live]
        for run, scale in zip(live, self.scales, strict=True):
            for group, base_lr in zip(run.plan.optimizer.param_groups, run.base_lrs, strict=True):
                group["lr"] = base_lr * scale
        x, lengths, y = batches.of_runs(self.data.train, [idx for _, idx in drawn], self.device)
        with autocast(self.device):
            logits = self.layout.model(x, lengths)
            losses = self.loss_fn(logits, y).view(len(live), -1).mean(dim=1)
        losses.sum().backward()
        if self.cfg.grad_clip is not None:
            self.layout.clip(self.cfg.grad_clip)
        self.layout.step()
        self.layout.zero_grad()
        self.loss_sums += losses.detach()
        self.loss_count += 1
        self.progress()
        self.bar.update()

    def log_train_loss(self, step: int) -> None:
        train_losses = (self.loss_sums / self.loss_count).tolist()
        for run, loss, scale in zip(self.live, train_losses, self.scales, strict=True):
            run.log({"step": step, "train/loss": loss, "lr": run.base_lrs[0] * scale}, step)
        self.bar.set_postfix({"loss": f"{min(train_losses):.3f}"}, refresh=False)
        self.loss_sums.zero_()
        self.loss_count = 0

    def close(self) -> None:
        self.bar.close()
        if self.layout is not self.given:  # the caller closes its own
            self.layout.close()


def _validated(run: Run, score: dict[str, float], metric: str, cfg: FitConfig) -> None:
    """Record a validation score in the run's state: history, best score and weights (every
    parameter that can train, so restoring needs no knowledge of unfreezing), early stopping."""
    state = run.state
    record = {"step": state.step, **{f"val/{k}": v for k, v in score.items()}}
    state.history.append(record)
    run.log(record, state.step)
    if not state.best_val or score[metric] > state.best_val[metric]:
        state.best_val, state.best_step, state.evals_since_best = score, state.step, 0
        state.best_weights = _snapshot(run.model, run.plan)
    else:
        state.evals_since_best += 1
    if cfg.patience is not None and state.evals_since_best >= cfg.patience:
        state.stopped_at = state.step


def _result(run: Run, test: dict[str, float], metric: str, group: bool) -> FitResult:
    state, pruned_at = run.state, run.pruned_at
    log.info(
        "%sbest val %s=%.4f at step %d; test %s=%.4f%s",
        f"{run.label}: " if group else "", metric, state.best_val[metric], state.best_step,
        metric, test[metric], "" if pruned_at is None else f" (pruned at step {pruned_at})",
    )  # fmt: skip
    steps = state.stopped_at if state.stopped_at is not None else state.step
    return FitResult(state.best_val, state.best_step, test, steps, state.stopped_at is not None,
                     state.seconds, state.history, state.val_seconds, pruned_at)  # fmt: skip


def _snapshot(model: nn.Module, plan: TrainPlan) -> dict[str, torch.Tensor]:
    """Copies of every parameter of the plan's optimizer (all that can ever train), by name."""
    ids = {id(p) for group in plan.optimizer.param_groups for p in group["params"]}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in ids}


@torch.no_grad()
def _restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)


def _shared_loss(runs: Sequence[Run]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The runs' loss function; runs trained together share it and have no unfreeze events."""
    if len(runs) > 1:
        if any(run.plan.unfreeze for run in runs):
            raise LockstepError(f"unfreeze events (scheme=gradual_unfreeze): {DEFAULT_LAUNCHER}")
        if len({run.plan.loss for run in runs}) > 1:
            raise LockstepError(f"runs with different loss functions: {DEFAULT_LAUNCHER}")
    return runs[0].plan.loss


def _shared(runs: Sequence[Run]) -> FitConfig:
    """The loop settings of every run (they may differ in seed only)."""
    cfgs = [run.settings for run in runs]
    if any(replace(c, seed=0) != replace(cfgs[0], seed=0) for c in cfgs):
        raise ValueError("runs trained together must share every loop setting but the seed")
    return cfgs[0]

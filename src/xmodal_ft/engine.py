"""The training loop: plain PyTorch, top to bottom. Knows nothing of Hydra, tasks or variants."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from xmodal_ft import checkpoint, metrics
from xmodal_ft.lockstep import DEFAULT_LAUNCHER, Layout, LockstepError, Single
from xmodal_ft.record import Tracker
from xmodal_ft.schemes import TrainPlan
from xmodal_ft.tasks.base import Split, TaskData, subsample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    batch_size: int = 8
    max_steps: int = 1000
    eval_every: int = 100  # steps between validation passes
    patience: int | None = None  # evaluations without improvement before stopping; None: never
    grad_clip: float | None = 1.0
    eval_batch_size: int = 64
    val_subset: int | None = None  # examples scored per validation pass (fixed); None: all
    seed: int = 0
    log_every: int = 10
    progress: bool = True
    checkpoint_every: int | None = None  # steps between checkpoints (with a checkpoint path)


@dataclass
class FitResult:
    best_val: dict[str, float]
    best_step: int
    test: dict[str, float]
    steps: int
    stopped_early: bool
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    val_seconds: float = 0.0  # spent in validation passes (shared by lockstep runs)


def select_device(name: str = "auto") -> torch.device:
    """CUDA when available (with TF32 matmuls), else CPU; or the device named."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (bf16 is emulated and slow on CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    when the file exists at the start, training continues from it with identical results.
    """
    return fit_runs(Single(model), [plan], data, [cfg], [tracker], [checkpoint_path])[0]


def fit_runs(
    layout: Layout,
    plans: Sequence[TrainPlan],
    data: TaskData,
    cfgs: Sequence[FitConfig],
    trackers: Sequence[Tracker | None],
    checkpoint_paths: Sequence[Path | None],
) -> list[FitResult]:
    """Train the R runs of `layout` together, each exactly as `fit` trains it alone.

    Runs share the loop settings and differ in seed (data order) and plan (LR, optimizer state);
    each has its own clipping, validation, early stopping (a stopped run stops updating), best
    weights, checkpoint and tracker. All runs of a layout resume from the same step.
    """
    cfg = _shared(cfgs)
    runs, model = layout.runs, layout.model
    if runs > 1 and any(plan.on_epoch is not None for plan in plans):
        raise LockstepError(f"epoch hooks (scheme=gradual_unfreeze): {DEFAULT_LAUNCHER}")
    device = next(model.parameters()).device
    metric = data.spec.metrics[0]
    val = subsample(data.val, cfg.val_subset, seed=0)
    optimizers = [plan.optimizer for plan in plans]
    base_lrs = [[group["lr"] for group in opt.param_groups] for opt in optimizers]
    bests = [BestWeights(m) for m in layout.models]
    states = []
    for r, (path, plan, best) in enumerate(zip(checkpoint_paths, plans, bests, strict=True)):
        with layout.own_rng(r):
            states.append(_resume(path, layout.models[r], plan, best))
    first_step = states[0].step
    if any(state.step != first_step for state in states):
        raise ValueError("lockstep runs must resume from the same step; train them apart")
    active = [state.stopped_at is None for state in states]  # False once a run stopped early
    ended: list[tuple[int, float]] = [(s.stopped_at or 0, 0.0) for s in states]  # (step, seconds)
    loss_sum = torch.tensor([s.loss_sum for s in states], dtype=torch.float32, device=device)
    loss_count = states[0].loss_count
    epoch = states[0].epoch
    batches = [
        _shuffled_batches(data.train, cfg.batch_size, c.seed, device, first_step) for c in cfgs
    ]
    start, val_seconds = time.perf_counter(), 0.0
    bar = tqdm(
        total=cfg.max_steps,
        initial=first_step,
        disable=not cfg.progress,
        desc="train" if runs == 1 else f"train {runs} runs",
        dynamic_ncols=True,
    )
    model.train()
    for step in range(first_step, cfg.max_steps + 1):
        if _checkpoint_due(step, first_step, cfg):
            for r in range(runs):
                with layout.own_rng(r):
                    _save(checkpoint_paths[r], states[r], step, epoch, loss_sum[r], loss_count,
                          layout.models[r], plans[r], bests[r])  # fmt: skip
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val_start = time.perf_counter()
            scores = evaluate_runs(model, runs, val, data.spec.metrics, cfg, "val")
            val_seconds += time.perf_counter() - val_start
            for r in _indices(active):
                state, score = states[r], scores[r]
                record = {"step": step, **{f"val/{k}": v for k, v in score.items()}}
                state.history.append(record)
                _log(trackers[r], record, step)
                if not state.best_val or score[metric] > state.best_val[metric]:
                    state.best_val, state.best_step, state.evals_since_best = score, step, 0
                    bests[r].save()
                else:
                    state.evals_since_best += 1
                if cfg.patience is not None and state.evals_since_best >= cfg.patience:
                    active[r], state.stopped_at = False, step
                    ended[r] = (step, time.perf_counter() - start)
            best = max(states[r].best_val[metric] for r in range(runs))
            bar.set_postfix({f"best_val_{metric}": f"{best:.3f}"}, refresh=False)
            if not any(active):
                break
        if step == cfg.max_steps:
            break
        drawn = [next(b) for b in batches]
        if drawn[0][0] != epoch:
            epoch = drawn[0][0]
            for plan, best in zip(plans, bests, strict=True):
                if plan.on_epoch is not None:
                    best.before_unfreeze()
                    plan.on_epoch(epoch)
                    best.after_unfreeze()
        scales = [plan.lr_scale(step) for plan in plans]
        for plan, lrs, scale in zip(plans, base_lrs, scales, strict=True):
            for group, base_lr in zip(plan.optimizer.param_groups, lrs, strict=True):
                group["lr"] = base_lr * scale
        x, lengths, y = _stack_batches([batch for _, batch in drawn])
        with autocast(device):
            logits = model(x, lengths)
            losses = F.cross_entropy(logits, y, reduction="none").view(runs, -1).mean(dim=1)
        losses.sum().backward()
        if cfg.grad_clip is not None:
            layout.clip(cfg.grad_clip)
        layout.step(optimizers, active)
        layout.zero_grad()
        loss_sum += losses.detach()
        loss_count += 1
        bar.update()
        if (step + 1) % cfg.log_every == 0:
            train_losses = (loss_sum / loss_count).tolist()
            for r in _indices(active):
                lr = base_lrs[r][0] * scales[r]
                values = {"step": step + 1, "train/loss": train_losses[r], "lr": lr}
                _log(trackers[r], values, step + 1)
            bar.set_postfix({"loss": f"{min(train_losses):.3f}"}, refresh=False)
            loss_sum.zero_()
            loss_count = 0
    bar.close()
    for r in _indices(active):
        ended[r] = (step, time.perf_counter() - start)
    for best in bests:
        best.restore()
    tests = evaluate_runs(model, runs, data.test, data.spec.metrics, cfg, "test")
    results = []
    for r, (state, test) in enumerate(zip(states, tests, strict=True)):
        log.info(
            "%sbest val %s=%.4f at step %d; test %s=%.4f",
            f"run {r}: " if runs > 1 else "",
            metric, state.best_val[metric], state.best_step, metric, test[metric],
        )  # fmt: skip
        steps, seconds = ended[r]
        results.append(
            FitResult(state.best_val, state.best_step, test, steps, not active[r], seconds,
                      state.history, val_seconds)
        )  # fmt: skip
    return results


def evaluate(
    model: nn.Module,
    split: Split,
    names: tuple[str, ...],
    batch_size: int,
) -> dict[str, float]:
    """Metrics of one run's `model` on a whole split, in eval mode."""
    return _evaluate(model, 1, split, names, batch_size, None)[0]


def evaluate_runs(
    model: nn.Module, runs: int, split: Split, names: tuple[str, ...], cfg: FitConfig, desc: str
) -> list[dict[str, float]]:
    """Metrics of each of the `runs` runs of `model` on a whole split, in one batched pass."""
    return _evaluate(model, runs, split, names, cfg.eval_batch_size, desc if cfg.progress else None)


@torch.inference_mode()
def _evaluate(
    model: nn.Module,
    runs: int,
    split: Split,
    names: tuple[str, ...],
    batch_size: int,
    progress: str | None,
) -> list[dict[str, float]]:
    """Each chunk of `batch_size` examples goes through the model once per run, as one batch of
    runs · chunk rows (run-major)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds = []
    starts = range(0, len(split), batch_size)
    for start in tqdm(starts, desc=progress, disable=progress is None, leave=False):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        x, lengths, _ = _batch(split, idx, device)
        if runs > 1:
            x, lengths, _ = _stack_batches([(x, lengths, None)] * runs)
        with autocast(device):
            logits = model(x, lengths)
        preds.append(logits.argmax(dim=-1).view(runs, -1).cpu())
    model.train(was_training)
    by_run = torch.cat(preds, dim=1)
    return [metrics.compute(names, pred, split.y) for pred in by_run]


class BestWeights:
    """Copies of the trainable parameters at the best validation step, restorable at the end.

    Parameters that a scheme unfreezes later keep their pre-unfreeze values, so restoring a
    state saved while they were frozen puts those values back too.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved: dict[str, torch.Tensor] = {}
        self.before_training: dict[str, torch.Tensor] = {}
        self._frozen: set[str] = set()

    def save(self) -> None:
        self.saved = {
            n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad
        }

    def before_unfreeze(self) -> None:
        self._frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}

    def after_unfreeze(self) -> None:
        for name, param in self.model.named_parameters():
            if param.requires_grad and name in self._frozen and name not in self.before_training:
                self.before_training[name] = param.detach().clone()

    @torch.no_grad()
    def restore(self) -> None:
        for name, param in self.model.named_parameters():
            value = self.saved.get(name, self.before_training.get(name))
            if value is not None:
                param.copy_(value)


def _checkpoint_due(step: int, first_step: int, cfg: FitConfig) -> bool:
    """A checkpoint is written every `checkpoint_every` steps, before that step's evaluation."""
    every = cfg.checkpoint_every
    return bool(every) and first_step < step < cfg.max_steps and step % every == 0


def _resume(
    path: Path | None, model: nn.Module, plan: TrainPlan, best: BestWeights
) -> checkpoint.LoopState:
    """The loop state saved at `path` (model, optimizer, RNGs restored), or a fresh one."""
    if path is None or not path.exists():
        return checkpoint.LoopState()

    def replay_epoch(epoch: int) -> None:
        if plan.on_epoch is not None:
            plan.on_epoch(epoch)

    state, copies = checkpoint.load(path, model, plan.optimizer, replay_epoch)
    best.saved, best.before_training = copies["saved"], copies["before_training"]
    log.info("resumed from %s at step %d", path, state.step)
    return state


def _shared(cfgs: Sequence[FitConfig]) -> FitConfig:
    """The loop settings of every run (they may differ in seed only)."""
    if any(replace(c, seed=0) != replace(cfgs[0], seed=0) for c in cfgs):
        raise ValueError("runs trained together must share every loop setting but the seed")
    return cfgs[0]


def _indices(flags: list[bool]) -> list[int]:
    return [i for i, flag in enumerate(flags) if flag]


def _save(
    path: Path | None,
    state: checkpoint.LoopState,
    step: int,
    epoch: int,
    loss_sum: torch.Tensor,
    loss_count: int,
    model: nn.Module,
    plan: TrainPlan,
    best: BestWeights,
) -> None:
    """One run's checkpoint at the start of `step`, before that step's evaluation."""
    if path is None:
        return
    state.step, state.epoch = step, epoch
    state.loss_sum, state.loss_count = loss_sum.item(), loss_count
    best_copies = {"saved": best.saved, "before_training": best.before_training}
    checkpoint.save(path, state, model, plan.optimizer, best_copies)


def _stack_batches(
    batches: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Runs' batches as one run-major batch, padded to the longest sequence among them."""
    if len(batches) == 1:
        return batches[0]
    xs, lengths, ys = zip(*batches, strict=True)
    width = max(x.shape[1] for x in xs) if xs[0].dim() > 1 else 0
    if lengths[0] is not None:
        xs = [F.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1])) for x in xs]
    x = torch.cat(xs)
    length = None if lengths[0] is None else torch.cat(lengths)
    y = None if ys[0] is None else torch.cat(ys)
    return x, length, y


def _log(tracker: Tracker | None, values: dict[str, float], step: int) -> None:
    if tracker is not None:
        tracker.log(values, step)


def _shuffled_batches(
    split: Split, batch_size: int, seed: int, device: torch.device, skip: int = 0
) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]]:
    """Endless (epoch, batch) pairs: a seeded permutation per epoch, dropping the last partial.

    The first `skip` batches are passed over without being built (to resume a run).
    """
    if len(split) < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(split)} training examples")
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(split) // batch_size
    epoch = 0
    while True:
        order = torch.randperm(len(split), generator=generator)
        for i, start in enumerate(range(0, per_epoch * batch_size, batch_size)):
            if epoch * per_epoch + i >= skip:
                yield epoch, _batch(split, order[start : start + batch_size], device)
        epoch += 1


def _batch(
    split: Split, idx: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Rows `idx` of `split` on `device`, trimmed to the longest sequence among them."""
    x, y = split.x[idx], split.y[idx]
    lengths = None
    if split.lengths is not None:
        lengths = split.lengths[idx]
        x = x[:, : int(lengths.max())]
        lengths = lengths.to(device, non_blocking=True)
    if not x.is_floating_point():
        x = x.long()
    return x.to(device, non_blocking=True), lengths, y.to(device, non_blocking=True)

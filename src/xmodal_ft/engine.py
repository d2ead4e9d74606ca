"""The training loop: plain PyTorch, top to bottom. Knows nothing of Hydra, tasks or variants."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from xmodal_ft import checkpoint, metrics
from xmodal_ft.record import Tracker
from xmodal_ft.schemes import TrainPlan
from xmodal_ft.tasks.base import Split, TaskData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    batch_size: int = 8
    max_steps: int = 1000
    eval_every: int = 100  # steps between validation passes
    patience: int | None = None  # evaluations without improvement before stopping; None: never
    grad_clip: float | None = 1.0
    eval_batch_size: int = 64
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
    """Train with early stopping on validation; evaluate test with the best-validation weights.

    With `checkpoint_path`, the loop state is saved there every `cfg.checkpoint_every` steps and,
    when the file exists at the start, training continues from it with identical results.
    """
    device = next(model.parameters()).device
    metric = data.spec.metrics[0]
    base_lrs = [group["lr"] for group in plan.optimizer.param_groups]
    best = BestWeights(model)
    resumed = _resume(checkpoint_path, model, plan, best)
    first_step, epoch, history = resumed.step, resumed.epoch, resumed.history
    best_val, best_step = resumed.best_val, resumed.best_step
    evals_since_best, stopped_early = resumed.evals_since_best, False
    loss_sum = torch.tensor(resumed.loss_sum, dtype=torch.float32, device=device)
    loss_count = resumed.loss_count
    batches = _shuffled_batches(data.train, cfg.batch_size, cfg.seed, device, first_step)
    start = time.perf_counter()
    bar = tqdm(
        total=cfg.max_steps,
        initial=first_step,
        disable=not cfg.progress,
        desc="train",
        dynamic_ncols=True,
    )
    model.train()
    for step in range(first_step, cfg.max_steps + 1):
        if checkpoint_path and _checkpoint_due(step, first_step, cfg):
            state = checkpoint.LoopState(
                step, epoch, best_val, best_step, evals_since_best, history,
                loss_sum.item(), loss_count,
            )  # fmt: skip
            best_copies = {"saved": best.saved, "before_training": best.before_training}
            checkpoint.save(checkpoint_path, state, model, plan.optimizer, best_copies)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = evaluate(model, data.val, data.spec.metrics, cfg.eval_batch_size)
            record = {"step": step, **{f"val/{k}": v for k, v in val.items()}}
            history.append(record)
            _log(tracker, record, step)
            if not best_val or val[metric] > best_val[metric]:
                best_val, best_step, evals_since_best = val, step, 0
                best.save()
            else:
                evals_since_best += 1
            bar.set_postfix({f"val_{metric}": f"{val[metric]:.3f}"}, refresh=False)
            if cfg.patience is not None and evals_since_best >= cfg.patience:
                stopped_early = True
                break
        if step == cfg.max_steps:
            break
        batch_epoch, (x, lengths, y) = next(batches)
        if batch_epoch != epoch:
            epoch = batch_epoch
            if plan.on_epoch is not None:
                best.before_unfreeze()
                plan.on_epoch(epoch)
                best.after_unfreeze()
        scale = plan.lr_scale(step)
        for group, base_lr in zip(plan.optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * scale
        with autocast(device):
            loss = F.cross_entropy(model(x, lengths), y)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(_trainable(model), cfg.grad_clip, foreach=True)
        plan.optimizer.step()
        plan.optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_count += 1
        bar.update()
        if (step + 1) % cfg.log_every == 0:
            train_loss = (loss_sum / loss_count).item()
            _log(
                tracker,
                {"step": step + 1, "train/loss": train_loss, "lr": base_lrs[0] * scale},
                step + 1,
            )
            bar.set_postfix({"loss": f"{train_loss:.3f}"}, refresh=False)
            loss_sum.zero_()
            loss_count = 0
    bar.close()
    train_seconds = time.perf_counter() - start
    best.restore()
    test = evaluate(model, data.test, data.spec.metrics, cfg.eval_batch_size)
    log.info(
        "best val %s=%.4f at step %d; test %s=%.4f",
        metric,
        best_val[metric],
        best_step,
        metric,
        test[metric],
    )
    return FitResult(best_val, best_step, test, step, stopped_early, train_seconds, history)


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, names: tuple[str, ...], batch_size: int
) -> dict[str, float]:
    """Metrics of `model` on a whole split, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, len(split), batch_size):
        x, lengths, _ = _batch(
            split, torch.arange(start, min(start + batch_size, len(split))), device
        )
        with autocast(device):
            preds.append(model(x, lengths).argmax(dim=-1).cpu())
    model.train(was_training)
    return metrics.compute(names, torch.cat(preds), split.y)


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


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


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

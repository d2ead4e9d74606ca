"""The training loop: plain PyTorch, top to bottom. Knows nothing of Hydra, tasks or variants."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from xmodal_ft import checkpoint, metrics
from xmodal_ft.checkpoint import LoopState
from xmodal_ft.errors import DEFAULT_LAUNCHER, LockstepError
from xmodal_ft.layout import Single
from xmodal_ft.record.trackers import Tracker
from xmodal_ft.tasks.base import Split, TaskData, subsample

if TYPE_CHECKING:  # a group of runs needs lockstep (and a newer transformers); one run does not
    from xmodal_ft.lockstep import Layout
    from xmodal_ft.pruning import GroupPruner

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
    pruned_at: int | None = None  # the step a pruner stopped the run at (pruning.GroupPruner)


def _constant(step: int) -> float:
    return 1.0


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


def per_example_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of each example (the engine averages each run's)."""
    return F.cross_entropy(logits, y, reduction="none")


@dataclass(frozen=True)
class Unfreeze:
    """`params` stay frozen until epoch `epoch` starts and train from then on."""

    epoch: int
    params: tuple[nn.Parameter, ...]
    name: str = ""


@dataclass
class TrainPlan:
    """How to train one run's model; schemes fill it, the engine follows it.

    `optimizer` holds every parameter that ever trains, in groups with their base LRs;
    `lr_scale(step)` multiplies each group's base LR at that step (the schedule); `unfreeze`
    lists parameters that start frozen and when they join; `loss(logits, y)` gives each
    example's loss. `params` counts parameters for the record (trainable / total / adapter).
    """

    optimizer: torch.optim.Optimizer
    lr_scale: Callable[[int], float] = _constant
    unfreeze: Sequence[Unfreeze] = ()
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = per_example_cross_entropy
    params: dict[str, int] = field(default_factory=dict)


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
    return fit_runs(Single(model), [plan], data, [cfg], [tracker], [checkpoint_path])[0]


def fit_runs(
    layout: Layout,
    plans: Sequence[TrainPlan],
    data: TaskData,
    cfgs: Sequence[FitConfig],
    trackers: Sequence[Tracker | None],
    checkpoint_paths: Sequence[Path | None],
    pruner: GroupPruner | None = None,
    finished: Callable[[int, FitResult], None] | None = None,
) -> list[FitResult]:
    """Train the R runs of `layout` together, each exactly as `fit` trains it alone.

    Runs share the loop settings and differ in seed (data order) and plan (LR, optimizer state);
    each has its own clipping, validation, early stopping, best weights, checkpoint and tracker.
    A run that stops (early stopping, or `pruner` stopping its LR after a validation pass) is
    tested with its best weights and leaves the stack (`layout.keep`): the steps after compute
    only the runs still training. `finished(r, result)` gets each run's result as soon as it is
    known. All runs of a layout resume from the same step. Each run's loop variables live in
    its `LoopState`, which its checkpoint holds as is.
    """
    cfg = _shared(cfgs)
    metric = data.spec.metrics[0]
    val = subsample(data.val, cfg.val_subset, seed=0)
    optimizers = [plan.optimizer for plan in plans]
    base_lrs = [[group["lr"] for group in opt.param_groups] for opt in optimizers]
    loss_fn = _loss_of(plans)
    given, device = layout, next(layout.model.parameters()).device
    states = []
    for r, (path, plan) in enumerate(zip(checkpoint_paths, plans, strict=True)):
        with layout.own_rng(r):
            states.append(_resume(path, layout.models[r], plan))
    for state in states:
        state.threads = torch.get_num_threads()  # what its checkpoints record from now on
    first_step = states[0].step
    if any(state.step != first_step for state in states):
        raise ValueError("lockstep runs must resume from the same step; train them apart")
    live = list(range(len(states)))  # the runs in the layout, in its order
    results: dict[int, FitResult] = {}
    start = time.perf_counter()
    seconds = [state.seconds for state in states]  # before this call (a resumed run)

    def clock(r: int) -> float:
        return seconds[r] + time.perf_counter() - start

    def leave(gone: list[int]) -> Layout:
        """Test the runs `gone` with their best weights and take them out of the layout."""
        for r in gone:
            i = live.index(r)
            states[r].seconds = clock(r)
            _restore(layout.models[i], states[r].best_weights)
            test = evaluate_runs(layout.models[i], 1, data.test, data.spec.metrics, cfg, "test")[0]
            results[r] = _result(states[r], test, metric, pruned_at.get(r), len(states) > 1, r)
            if finished is not None:
                finished(r, results[r])
        kept = [i for i, r in enumerate(live) if r not in gone]
        live[:] = [live[i] for i in kept]
        if not kept:
            return layout
        smaller = layout.keep(kept)
        smaller.model.train()
        return smaller

    pruned_at = {} if pruner is None else pruner.pruned_at
    gone = [r for r, state in enumerate(states) if state.stopped_at is not None]
    if gone:
        layout = leave(gone)
    loss_sums = torch.tensor([float(states[r].loss_sum) for r in live], device=device)
    batches = {
        r: _shuffled_batches(data.train, cfg.batch_size, cfgs[r].seed, first_step) for r in live
    }
    layout.model.train()
    bar = tqdm(
        total=cfg.max_steps,
        initial=first_step,
        disable=not cfg.progress,
        desc="train" if len(states) == 1 else f"train {len(states)} runs",
        dynamic_ncols=True,
    )
    for step in range(first_step, cfg.max_steps + 1):
        for i, r in enumerate(live):
            states[r].step = step
            states[r].loss_sum = loss_sums[i]  # one add per step sums every run's loss
        if _checkpoint_due(step, first_step, cfg):
            for i, r in enumerate(live):
                if checkpoint_paths[r] is not None:
                    states[r].seconds = clock(r)
                    with layout.own_rng(i):
                        checkpoint.save(
                            checkpoint_paths[r], states[r], layout.models[i], optimizers[r]
                        )
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val_start = time.perf_counter()
            scores = _validation_scores(layout, step, val, data.spec.metrics, cfg)
            val_seconds = time.perf_counter() - val_start
            for i, (r, score) in enumerate(zip(live, scores, strict=True)):
                states[r].val_seconds += val_seconds
                _validated(states[r], score, metric, cfg, trackers[r], layout.models[i], plans[r])
            training = {r for r in live if states[r].stopped_at is None}
            if pruner is not None and training and step < cfg.max_steps:
                pruner.prune(step, [state.history for state in states], training)
            best = max(states[r].best_val[metric] for r in live)
            bar.set_postfix({f"best_val_{metric}": f"{best:.3f}"}, refresh=False)
            gone = [r for r in live if states[r].stopped_at is not None or r in pruned_at]
            if gone and step < cfg.max_steps:
                kept = [i for i, r in enumerate(live) if r not in gone]
                layout = leave(gone)
                loss_sums = loss_sums[kept]
        if step == cfg.max_steps or not live:
            break
        drawn = [next(batches[r]) for r in live]
        if drawn[0][0] != states[live[0]].epoch:
            for r in live:
                states[r].epoch = drawn[0][0]
                enter_epoch(plans[r], states[r].epoch)
        scales = [plans[r].lr_scale(step) for r in live]
        for r, scale in zip(live, scales, strict=True):
            for group, base_lr in zip(optimizers[r].param_groups, base_lrs[r], strict=True):
                group["lr"] = base_lr * scale
        x, lengths, y = _runs_batch(data.train, [idx for _, idx in drawn], device)
        with autocast(device):
            logits = layout.model(x, lengths)
            losses = loss_fn(logits, y).view(len(live), -1).mean(dim=1)
        losses.sum().backward()
        if cfg.grad_clip is not None:
            layout.clip(cfg.grad_clip)
        layout.step([optimizers[r] for r in live])
        layout.zero_grad()
        loss_sums += losses.detach()
        for r in live:
            states[r].loss_count += 1
        bar.update()
        if (step + 1) % cfg.log_every == 0:
            train_losses = (loss_sums / states[live[0]].loss_count).tolist()
            for r, loss, scale in zip(live, train_losses, scales, strict=True):
                values = {"step": step + 1, "train/loss": loss, "lr": base_lrs[r][0] * scale}
                _log(trackers[r], values, step + 1)
            bar.set_postfix({"loss": f"{min(train_losses):.3f}"}, refresh=False)
            loss_sums.zero_()
            for r in live:
                states[r].loss_count = 0
    bar.close()
    if live:
        for r in live:
            states[r].seconds = clock(r)
        for i, r in enumerate(live):
            _restore(layout.models[i], states[r].best_weights)
        tests = evaluate_runs(layout.model, len(live), data.test, data.spec.metrics, cfg, "test")
        for r, test in zip(live, tests, strict=True):
            results[r] = _result(states[r], test, metric, pruned_at.get(r), len(states) > 1, r)
            if finished is not None:
                finished(r, results[r])
    if layout is not given:  # the caller closes its own
        layout.close()
    return [results[r] for r in range(len(states))]


def _result(
    state: LoopState,
    test: dict[str, float],
    metric: str,
    pruned_at: int | None,
    group: bool,
    r: int,
) -> FitResult:
    log.info(
        "%sbest val %s=%.4f at step %d; test %s=%.4f%s",
        f"run {r}: " if group else "", metric, state.best_val[metric], state.best_step, metric,
        test[metric], "" if pruned_at is None else f" (pruned at step {pruned_at})",
    )  # fmt: skip
    steps = state.stopped_at if state.stopped_at is not None else state.step
    return FitResult(state.best_val, state.best_step, test, steps, state.stopped_at is not None,
                     state.seconds, state.history, state.val_seconds, pruned_at)  # fmt: skip


def _validation_scores(
    layout: Layout, step: int, val: Split, names: tuple[str, ...], cfg: FitConfig
) -> list[dict[str, float]]:
    """Each run's validation scores. At step 0, runs whose weights are equal (runs of one seed)
    are scored once, by one run's own model (which computes as its lone run)."""
    if step > 0 or layout.runs == 1:
        return evaluate_runs(layout.model, layout.runs, val, names, cfg, "val")
    same = _first_equal(layout.models)
    scores = {r: evaluate_runs(layout.models[r], 1, val, names, cfg, "val")[0] for r in set(same)}
    return [scores[r] for r in same]


def _first_equal(run_models: Sequence[nn.Module]) -> list[int]:
    """For each run, the first run whose parameters all equal its own (itself at least)."""
    params = [list(m.parameters()) for m in run_models]

    def equal(a: list[nn.Parameter], b: list[nn.Parameter]) -> bool:
        return all(
            x.data_ptr() == y.data_ptr() or torch.equal(x, y) for x, y in zip(a, b, strict=True)
        )

    return [next(o for o in range(r + 1) if equal(params[o], own)) for r, own in enumerate(params)]


def _validated(
    state: LoopState,
    score: dict[str, float],
    metric: str,
    cfg: FitConfig,
    tracker: Tracker | None,
    model: nn.Module,
    plan: TrainPlan,
) -> None:
    """Record a validation score in `state`: history, best score and weights (every parameter
    that can train, so restoring needs no knowledge of unfreezing), early stopping."""
    record = {"step": state.step, **{f"val/{k}": v for k, v in score.items()}}
    state.history.append(record)
    _log(tracker, record, state.step)
    if not state.best_val or score[metric] > state.best_val[metric]:
        state.best_val, state.best_step, state.evals_since_best = score, state.step, 0
        state.best_weights = _snapshot(model, plan)
    else:
        state.evals_since_best += 1
    if cfg.patience is not None and state.evals_since_best >= cfg.patience:
        state.stopped_at = state.step


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


def _checkpoint_due(step: int, first_step: int, cfg: FitConfig) -> bool:
    """A checkpoint is written every `checkpoint_every` steps, before that step's evaluation."""
    every = cfg.checkpoint_every
    return bool(every) and first_step < step < cfg.max_steps and step % every == 0


def _resume(path: Path | None, model: nn.Module, plan: TrainPlan) -> LoopState:
    """The loop state saved at `path` (model, optimizer and RNGs restored), or a fresh one when
    there is none or it cannot be read (reported, the file left to be overwritten)."""
    if path is None or not path.exists():
        return LoopState()
    try:
        state = checkpoint.load(path, model, plan.optimizer)
    except checkpoint.CheckpointError as err:
        log.warning("%s; training this run from the start", err)
        return LoopState()
    if state.epoch >= 0:
        enter_epoch(plan, state.epoch, quiet=True)
    log.info("resumed from %s at step %d", path, state.step)
    return state


def enter_epoch(plan: TrainPlan, epoch: int, quiet: bool = False) -> None:
    """At the start of `epoch`: each of the plan's late parameters trains iff its time came."""
    if not plan.unfreeze:
        return
    for event in plan.unfreeze:
        for param in event.params:
            param.requires_grad_(epoch >= event.epoch)
    if not quiet:
        names = [e.name for e in plan.unfreeze if epoch >= e.epoch]
        log.info("epoch %d: training groups %s", epoch, ", ".join(names))


def _snapshot(model: nn.Module, plan: TrainPlan) -> dict[str, torch.Tensor]:
    """Copies of every parameter of the plan's optimizer (all that can ever train), by name."""
    ids = {id(p) for group in plan.optimizer.param_groups for p in group["params"]}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in ids}


@torch.no_grad()
def _restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)


def _loss_of(plans: Sequence[TrainPlan]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The runs' loss function; runs trained together share it and have no unfreeze events."""
    if len(plans) > 1:
        if any(plan.unfreeze for plan in plans):
            raise LockstepError(f"unfreeze events (scheme=gradual_unfreeze): {DEFAULT_LAUNCHER}")
        if len({plan.loss for plan in plans}) > 1:
            raise LockstepError(f"runs with different loss functions: {DEFAULT_LAUNCHER}")
    return plans[0].loss


def _shared(cfgs: Sequence[FitConfig]) -> FitConfig:
    """The loop settings of every run (they may differ in seed only)."""
    if any(replace(c, seed=0) != replace(cfgs[0], seed=0) for c in cfgs):
        raise ValueError("runs trained together must share every loop setting but the seed")
    return cfgs[0]


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
    split: Split, batch_size: int, seed: int, skip: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """Endless (epoch, example indices) pairs: a seeded permutation per epoch, dropping the last
    partial batch. The first `skip` batches are passed over (to resume a run)."""
    if len(split) < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(split)} training examples")
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(split) // batch_size
    epoch = 0
    while True:
        order = torch.randperm(len(split), generator=generator)
        for i, start in enumerate(range(0, per_epoch * batch_size, batch_size)):
            if epoch * per_epoch + i >= skip:
                yield epoch, order[start : start + batch_size]
        epoch += 1


def _runs_batch(
    split: Split, idxs: list[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The runs' batches (rows `idxs[r]` of `split`) as one run-major batch: one gather where
    sequences have one length, else each run's batch trimmed as alone, then padded."""
    if len(idxs) == 1 or split.lengths is None:
        return _batch(split, idxs[0] if len(idxs) == 1 else torch.cat(idxs), device)
    return _stack_batches([_batch(split, idx, device) for idx in idxs])


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

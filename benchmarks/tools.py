"""The same training steps run three ways: xmodal-ft as `train.py` runs it, the HF Trainer, and a
plain loop.

xmodal-ft runs through its entry point, `xmodal_ft.run(cfg, run_dir)` (what `train.py` calls), on
the case's composed config: the recipe builds the task, model, variant, scheme and run layout,
sets threads and the allocator, trains with the engine and writes results.json. The benchmark only
observes: a clock around the run's tracker notes when each step's record arrives.

The Trainer and the plain loop train the same model (same init: `cases.build_model`) on the same
batches in the same order (the engine's seeded first-epoch permutation) with Adam(W, weight decay
0), constant LR and gradient clipping at 1.0, so the three loss sequences agree to float
tolerance. Each returns per-step wall times and per-step losses.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

import xmodal_ft
from benchmarks.cases import Case
from xmodal_ft import allocator, schemes
from xmodal_ft.record import results, trackers
from xmodal_ft.tasks.base import TaskData

Result = dict[str, Any]


class StepClock:
    """The run's own tracker, plus the time each record arrived and every train loss."""

    def __init__(self) -> None:
        self.inner: trackers.Tracker | None = None
        self.times: list[float] = []
        self.losses: list[float] = []

    def log(self, values: dict[str, float], step: int) -> None:
        self.times.append(time.perf_counter())  # step 0's validation record starts the clock
        if "train/loss" in values:
            self.losses.append(values["train/loss"])
        self.inner.log(values, step)

    def summary(self, values: dict[str, Any]) -> None:
        self.inner.summary(values)

    def close(self) -> None:
        self.inner.close()


@contextlib.contextmanager
def step_clock() -> Iterator[StepClock]:
    """Clock the run started inside the block: the tracker the recipe builds is wrapped."""
    clock, build = StepClock(), trackers.build_tracker

    def clocked(cfg: dict[str, Any], run_dir: Path, meta: dict[str, Any]) -> StepClock:
        clock.inner = build(cfg, run_dir, meta)
        return clock

    with mock.patch.object(trackers, "build_tracker", clocked):
        yield clock


@contextlib.contextmanager
def ablation(name: str | None) -> Iterator[None]:
    """Turn one always-on optimisation off (no config key does): `foreach_adam` gives the
    scheme's Adam torch's multi-tensor kernels instead of the fused ones; `glibc_free` leaves
    glibc returning freed memory to the kernel (`allocator.keep_freed_memory` not applied)."""
    if name is None:
        yield
        return
    if name == "foreach_adam":
        build = schemes.build

        def foreach(*args: Any, **kwargs: Any) -> schemes.TrainPlan:
            plan = build(*args, **kwargs)
            for group in plan.optimizer.param_groups:
                group.update(fused=False, foreach=True)
            return plan

        patch = mock.patch.object(schemes, "build", foreach)
    elif name == "glibc_free":
        patch = mock.patch.object(allocator, "keep_freed_memory", lambda: False)
    else:
        raise ValueError(f"unknown ablation {name!r}")
    with patch:
        yield


def run_xmodal(cfg: DictConfig, case: Case) -> Result:
    """`xmodal_ft.run` on the case's config, in a temporary run dir, every step clocked."""
    steps = case.warmup + case.steps
    with tempfile.TemporaryDirectory() as run_dir, step_clock() as clock:
        with ablation(case.ablation):
            xmodal_ft.run(cfg, run_dir)
        written = results.read_results(Path(run_dir))
    if written is None:
        raise RuntimeError(f"{case.name}: the run wrote no complete results.json")
    times = clock.times[: steps + 1]
    return {"step_seconds": _diffs(times), "losses": clock.losses, "params": written["params"]}


def run_naive(model: nn.Module, data: TaskData, case: Case) -> Result:
    """A straightforward loop as in the reference code: DataLoader, Adam on every parameter."""
    x, y = _engine_order(data, case)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=case.batch, drop_last=True
    )
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=case.lr)
    losses, times = [], [time.perf_counter()]
    model.train()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        times.append(time.perf_counter())
    return {"step_seconds": _diffs(times), "losses": losses}


def run_trainer(model: nn.Module, data: TaskData, case: Case) -> Result:
    """Hugging Face `Trainer` with its defaults, except: same order, LR, clipping, no decay."""
    try:
        from transformers import Trainer, TrainerCallback, TrainingArguments
    except ImportError as err:  # transformers imports accelerate lazily for the Trainer
        raise SystemExit(
            'the Trainer comparison needs accelerate: pip install -e ".[bench]"'
        ) from err
    x, y = _engine_order(data, case)
    cuda = next(model.parameters()).is_cuda
    times: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(Trainer):
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=case.batch,
            max_steps=case.warmup + case.steps,
            learning_rate=case.lr,
            weight_decay=0.0,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_drop_last=True,
            use_cpu=not cuda,
            bf16=cuda,
            seed=case.seed,
        )
        trainer = InOrder(
            model=_WithLoss(model),
            args=args,
            train_dataset=_Examples(x, y),
            callbacks=[Clock()],
        )
        trainer.train()
    return {"step_seconds": _diffs(times), "losses": losses}


BASELINES: dict[str, Callable[[nn.Module, TaskData, Case], Result]] = {
    "trainer": run_trainer,
    "naive": run_naive,
}


class _WithLoss(nn.Module):
    """The Trainer's model protocol: keyword inputs in, a dict with `loss` out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class _Examples(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def _engine_order(data: TaskData, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split in the order of the engine's first epoch (its seeded permutation)."""
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(case.seed))
    return data.train.x[order], data.train.y[order]


def _diffs(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]

"""One run in training: everything the loop needs of it and everything it leaves behind, in one
object: its spec, model, plan, loop settings, random stream, loop state, checkpoint, tracker and
result. The stack a group trains in keeps and drops `Run`s."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xmodal_ft import checkpoint, lease
from xmodal_ft.checkpoint import LoopState
from xmodal_ft.engine.plan import FitConfig, FitResult, TrainPlan, enter_epoch
from xmodal_ft.record import results

if TYPE_CHECKING:
    from xmodal_ft.record.trackers import Tracker
    from xmodal_ft.runspec import RunSpec

log = logging.getLogger(__name__)
RngState = tuple[torch.Tensor, torch.Tensor | None]  # CPU and CUDA generator states


def rng_state() -> RngState:
    """The global random state (CPU, and CUDA when present)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def set_rng_state(state: RngState) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


class RandomStream:
    """A run's own random numbers: the global random state its lone run would draw from, held
    in generators of its own (CPU, and CUDA where present; `state`: the global state now).

    A lone run trains on the global state itself: `install()` makes the stream the global
    state from then on. Runs stacked together keep their streams apart: `own()` makes a
    stream the global state within a block (a checkpoint, a resume), and lockstep's dropout
    draws each run's masks from `generator(device)`.
    """

    def __init__(self, state: RngState | None = None):
        state = rng_state() if state is None else state
        self.cpu = torch.Generator()
        self.cpu.set_state(state[0])
        self.cuda = None
        if state[1] is not None:
            self.cuda = torch.Generator(device="cuda")
            self.cuda.set_state(state[1])
        self.installed = False

    def state(self) -> RngState:
        return self.cpu.get_state(), None if self.cuda is None else self.cuda.get_state()

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The stream's generator on `device`'s type."""
        return self.cuda if device.type == "cuda" else self.cpu

    def install(self) -> None:
        """From now on the global random state is this stream (a run training alone)."""
        set_rng_state(self.state())
        self.installed = True

    @contextlib.contextmanager
    def own(self) -> Iterator[None]:
        """Within the block, the global random state is this stream's."""
        if self.installed:
            yield
            return
        outer = rng_state()
        set_rng_state(self.state())
        try:
            yield
        finally:
            inner = rng_state()
            self.cpu.set_state(inner[0])
            if self.cuda is not None:
                self.cuda.set_state(inner[1])
            set_rng_state(outer)


@dataclass(eq=False)
class Run:
    """One run in training (see the module docstring).

    `stream`: the random state its training starts from (by default the global state when the
    run is made: right after its model and plan were built, as its lone run starts). `spec` is
    what the recipe trains (None for a run made in code, e.g. by `engine.fit`). `base_lrs`:
    each parameter group's LR as the scheme set it, which the schedule scales at each step.
    """

    model: nn.Module
    plan: TrainPlan
    settings: FitConfig
    stream: RandomStream = field(default_factory=RandomStream)
    tracker: Tracker | None = None
    checkpoint_path: Path | None = None
    spec: RunSpec | None = None
    state: LoopState = field(default_factory=LoopState)
    pruned_at: int | None = None  # the step a pruner stopped it at
    result: FitResult | None = None

    def __post_init__(self) -> None:
        self.base_lrs = [group["lr"] for group in self.plan.optimizer.param_groups]

    @property
    def label(self) -> str:
        """How the log names it among the runs of a group."""
        return "" if self.spec is None else self.spec.run_dir.name

    def resume(self) -> int:
        """Continue where its checkpoint stopped, if it has one that can be read and fits:
        model, optimizer, random stream and loop state restored; else it starts afresh (an
        unreadable file is reported and left to be overwritten). Return the step it starts at."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return 0
        try:
            with self.stream.own():
                state = checkpoint.load(path, self.model, self.plan.optimizer)
        except checkpoint.CheckpointError as err:
            log.warning("%s; training this run from the start", err)
            return 0
        if state.epoch >= 0:
            enter_epoch(self.plan, state.epoch, quiet=True)
        log.info("resumed from %s at step %d", path, state.step)
        self.state = state
        return state.step

    def progress(self) -> None:
        """Called as the run makes progress: after each optimizer step and each batch of its
        validation and test passes. It renews the liveness of this process's leases
        (`lease.progress`), and raises `lease.Lost` once its lease was taken over."""
        lease.progress()

    def log(self, values: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(values, step)

    def save_checkpoint(self) -> None:
        """Write its checkpoint (loop state, trainable weights, optimizer, random stream)."""
        assert self.checkpoint_path is not None
        with self.stream.own():
            checkpoint.save(self.checkpoint_path, self.state, self.model, self.plan.optimizer)

    def write_results(self, payload: dict[str, Any]) -> Path:
        """Write its results.json (atomically) and drop its checkpoint: the run is done."""
        assert self.spec is not None
        lease.check(self.spec.run_dir, "results")  # raises lease.Lost: it writes nothing
        path = results.write_results(self.spec.run_dir, payload)
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)
        return path

"""Training checkpoints: everything `engine.fit` needs to continue a run exactly where it stopped.

A checkpoint holds the run's loop state as is (counters, history, best-validation weights), its
trainable parameters, its optimizer state and the global RNG states (dropout). The data order is
not stored: it is a pure function of (seed, step), replayed by the engine.

Files hold only tensors and plain containers (dicts, lists, tuples, numbers, strings), so they
load with `torch.load(weights_only=True)`: loading a tampered file runs no code. Each file is
written beside its target, fsynced, renamed over it and its directory fsynced (`atomic.py`), so a
crash leaves the old checkpoint or the new one. One that cannot be read anyway (a disk fault, a
copy cut short: every record is checked against its CRC-32) raises `CheckpointError` before
anything of it is applied.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xmodal_ft import lease
from xmodal_ft.atomic import atomic_path

FORMAT = 2  # 1: loop state and best copies apart, pickled with weights_only=False


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the run; the message names it."""


@dataclass
class LoopState:
    """One run's training loop at the start of `step`, before that step's evaluation."""

    step: int = 0
    epoch: int = -1  # the epoch of the last batch drawn
    loss_sum: float | torch.Tensor = 0.0  # train loss summed since the last record
    loss_count: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    evals_since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_at: int | None = None  # the step a run stopped early at
    seconds: float = 0.0  # training time so far (until it stopped)
    val_seconds: float = 0.0  # of which validation passes
    threads: int | None = None  # torch's intra-op threads it trains on; a resume keeps them
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # at best_step


def save(path: Path, state: LoopState, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the checkpoint of a run atomically and durably (see the module docstring); raise
    `lease.Lost`, writing nothing, where this process lost the run dir's lease."""
    lease.check(path.parent, f"checkpoint at step {state.step}")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    payload: dict[str, Any] = {
        "format": FORMAT,
        "loop": _own({f.name: getattr(state, f.name) for f in fields(state)}),
        "params": _own({n: p.detach() for n, p in trainable.items()}),
        "optimizer": _own(optimizer.state_dict()),
        "rng": torch.random.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "cuda_device": _cuda_index(model),  # whose state in cuda_rng the run draws from
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def size_estimate(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About how many bytes a checkpoint of this run takes: its trainable weights, their
    best-validation copies and the optimizer's state (two tensors each for Adam, one for SGD)."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    states = 2 if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) else 1
    return trainable * (2 + states)


def step(path: Path) -> int:
    """The step a checkpoint resumes at (its tensors memory-mapped, not read); 0 for a file
    that cannot be read (its run starts afresh, see `load`)."""
    try:
        return int(_read(path, mmap=True)["loop"]["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return 0


def resumed(
    path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer
) -> LoopState | None:
    """The loop state `load` would resume the run at (its tensors memory-mapped, not read):
    None for no file, or one that cannot be read or does not fit `model` and `optimizer` (its
    run starts afresh)."""
    if path is None or not path.exists():
        return None
    try:
        return _fitting(path, _read(path, mmap=True), model, optimizer)
    except CheckpointError:
        return None


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> LoopState:
    """Restore model, optimizer and RNGs from `path`; return the loop state.

    Raises `CheckpointError` (before changing anything) when the file cannot be read, holds
    objects other than tensors and plain containers, or does not fit `model` and `optimizer`.
    """
    payload = _read(path)
    state = _fitting(path, payload, model, optimizer)
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this run: {err}") from err
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    with torch.no_grad():
        for name, value in payload["params"].items():
            params[name].copy_(value)
    state.best_weights = {n: t.to(device) for n, t in state.best_weights.items()}
    torch.random.set_rng_state(payload["rng"])
    _restore_cuda_rng(payload, model)
    return state


def _cuda_index(model: nn.Module) -> int | None:
    """The index of the CUDA device the run draws from (its model's, else the current one);
    None where torch sees no CUDA device."""
    if not torch.cuda.is_available():
        return None
    device = next(model.parameters()).device
    if device.type != "cuda":
        return torch.cuda.current_device()
    return device.index if device.index is not None else torch.cuda.current_device()


def _restore_cuda_rng(payload: dict[str, Any], model: nn.Module) -> None:
    """Restore the CUDA random state of the device the run trained on to the device it trains
    on now. The devices a process sees differ between launches (a process that saw every card
    wrote it, a worker pinned to one card reads it), so one state goes to one device; checkpoints
    without `cuda_device` trained on the first card (`device=auto`)."""
    saved = payload["cuda_rng"]
    index = _cuda_index(model)
    if not saved or index is None:
        return
    source = payload.get("cuda_device") or 0
    torch.cuda.set_rng_state(saved[source if source < len(saved) else 0], index)


def _fitting(
    path: Path, payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> LoopState:
    """The loop state of `payload`, after checking that its weights and optimizer state fit
    `model` and `optimizer` by name and shape (a `CheckpointError` names what does not)."""
    params = dict(model.named_parameters())
    try:
        state = LoopState(**payload["loop"])
        for name, value in [*payload["params"].items(), *state.best_weights.items()]:
            if name not in params or value.shape != params[name].shape:
                raise CheckpointError(f"checkpoint {path} does not fit the model ({name})")
        saved = payload["optimizer"]
        own = [list(group["params"]) for group in optimizer.param_groups]
        if [len(g["params"]) for g in saved["param_groups"]] != [len(g) for g in own]:
            raise CheckpointError(f"checkpoint {path} does not fit the optimizer's groups")
        by_index = [p for group in own for p in group]
        for index, values in saved["state"].items():
            shapes = [v.shape for v in values.values() if torch.is_tensor(v) and v.dim() > 0]
            if any(shape != by_index[index].shape for shape in shapes):
                raise CheckpointError(f"checkpoint {path} does not fit the optimizer's state")
        if "rng" not in payload or "cuda_rng" not in payload:
            raise CheckpointError(f"checkpoint {path} holds no random state")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this run: {err}") from err
    return state


def _read(path: Path, mmap: bool = False) -> dict[str, Any]:
    """The payload at `path`, after checking every record against its CRC-32 (torch.load itself
    would return tensors whose bytes were damaged)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt: {damaged} fails its checksum")
        payload = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 (torch and zipfile raise many kinds for damage)
        raise CheckpointError(
            f"checkpoint {path} cannot be read (corrupt, truncated, or holding objects other "
            f"than weights): {_reason(err)}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a format-{FORMAT} xmodal-ft checkpoint")
    return payload


def _reason(err: Exception) -> str:
    """One line of `err`: for a refused object, the unpickler's refusal (torch's message is a
    page of advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:")[1].split(". ")[0].strip()
    return lines[0] if lines else type(err).__name__


def _own(value: Any) -> Any:
    """`value` with every tensor on the CPU in storage of its own: a view of a larger tensor
    (a lockstep run's slice of its stacked parameter) is saved alone, not with the whole."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        whole = value.untyped_storage().nbytes() != value.numel() * value.element_size()
        return value.clone() if whole or value.storage_offset() else value
    if isinstance(value, dict):
        return {k: _own(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_own(v) for v in value)
    return value

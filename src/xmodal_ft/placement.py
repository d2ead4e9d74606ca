"""Devices a sweep's lockstep groups train on: CUDA cards, or sets of CPU cores.

`hydra.launcher.devices` names them: null (every visible GPU when there are two or more; else
this process alone, one group after another), a count (that many GPUs, or the CPU cores cut
into that many equal sets), or a list of `cuda:<i>` / `cpu:<cores>` (`cpu:0-3`, `cpu:0,2`).
A worker process pinned to one device (`Device.pin`) trains the groups queued to it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from xmodal_ft.errors import UserError

SYNTAX = "a count (devices=2) or a list (devices=[cuda:0,cuda:1], devices=[cpu:0-3,cpu:4-7])"


class PlacementError(UserError, ValueError):
    """`hydra.launcher.devices` names devices this machine does not have."""


@dataclass(frozen=True)
class Device:
    """One worker's device: a CUDA card (its index among the visible ones) or CPU cores."""

    kind: str  # "cuda" or "cpu"
    ids: tuple[int, ...]  # the card, or the cores
    cores: tuple[int, ...] = ()  # a card's worker's share of the host's cores (() : all)

    @property
    def label(self) -> str:
        if self.kind == "cuda":
            return f"cuda:{self.ids[0]}"
        return f"cpu:{','.join(map(str, self.ids))}"

    def pin(self) -> None:
        """Confine this process to the device, before torch touches CUDA: the card becomes the
        only visible one (`device=auto` picks it), or the process runs on the cores alone with
        one torch thread per core and sees no card (`device=auto` picks the CPU, also on a GPU
        host); a card's worker runs on its share of the host's cores, so that the workers'
        CPU-side work does not oversubscribe them."""
        cores = self.ids if self.kind == "cpu" else self.cores
        if self.kind == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            cards = visible.split(",") if visible else None
            os.environ["CUDA_VISIBLE_DEVICES"] = cards[self.ids[0]] if cards else str(self.ids[0])
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)  # threads=null then gives one torch thread per core


def resolve(devices: int | str | Sequence[str] | None) -> list[Device]:
    """The devices `hydra.launcher.devices` names; [] means this process, one group at a time.
    Cards get near-equal shares of this process's cores for their workers."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = _named(devices, gpus)
    cards = [d for d in found if d.kind == "cuda"]
    shares = iter(_cut(_cores(), len(cards)) if cards else [])
    return [replace(d, cores=next(shares)) if d.kind == "cuda" else d for d in found]


def _named(devices: int | str | Sequence[str] | None, gpus: int) -> list[Device]:
    if devices is None:
        return [Device("cuda", (i,)) for i in range(gpus)] if gpus > 1 else []
    if isinstance(devices, bool):
        raise PlacementError(f"hydra.launcher.devices={devices}: use {SYNTAX}")
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        return _count(int(devices), gpus)
    if isinstance(devices, str):
        devices = [devices]
    found = [_parse(str(name), gpus) for name in devices]
    if not found:
        raise PlacementError(f"hydra.launcher.devices is empty: use null or {SYNTAX}")
    if len(set(found)) < len(found):
        raise PlacementError(f"hydra.launcher.devices={list(devices)} names a device twice")
    return found


def _count(n: int, gpus: int) -> list[Device]:
    if n < 1:
        raise PlacementError(f"hydra.launcher.devices={n} must be at least 1")
    if gpus:
        if n > gpus:
            raise PlacementError(
                f"hydra.launcher.devices={n} but torch sees {gpus} GPU(s): use devices={gpus} "
                "or fewer"
            )
        return [Device("cuda", (i,)) for i in range(n)]
    cores = _cores()
    if n > len(cores):
        raise PlacementError(
            f"hydra.launcher.devices={n} CPU core sets but this process may use {len(cores)} "
            f"core(s): use devices={len(cores)} or fewer"
        )
    return [Device("cpu", share) for share in _cut(cores, n)]


def _cut(cores: list[int], n: int) -> list[tuple[int, ...]]:
    """`cores` in `n` contiguous near-equal sets (sets of one core, reused in turn, when there
    are fewer cores than sets)."""
    if len(cores) < n:
        return [(cores[i % len(cores)],) for i in range(n)]
    size, extra = divmod(len(cores), n)
    sets, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        sets.append(tuple(cores[start:end]))
        start = end
    return sets


def _parse(name: str, gpus: int) -> Device:
    kind, _, rest = name.partition(":")
    try:
        ids = sorted({i for part in rest.split(",") for i in _span(part)}) if rest else []
    except ValueError:
        ids = None
    if kind == "cuda" and ids is not None and len(ids) <= 1:
        index = ids[0] if ids else 0
        if index >= gpus:
            raise PlacementError(f"hydra.launcher.devices names {name}; torch sees {gpus} GPU(s)")
        return Device("cuda", (index,))
    if kind == "cpu" and ids:
        missing = set(ids) - set(_cores())
        if missing:
            raise PlacementError(
                f"hydra.launcher.devices names {name} but cores {sorted(missing)} are not among "
                f"this process's cores {_cores()}"
            )
        return Device("cpu", tuple(ids))
    raise PlacementError(f"hydra.launcher.devices: {name!r} is not a device: use {SYNTAX}")


def _span(part: str) -> range:
    first, _, last = part.partition("-")
    return range(int(first), int(last or first) + 1)


def _cores() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))

"""Tasks: `build(task_cfg)` turns a task config into in-memory tensors plus a TaskSpec."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from xmodal_ft.tasks import images, listops
from xmodal_ft.tasks.base import DataError, Split, TaskData, TaskSpec
from xmodal_ft.tasks.cache import cached

BUILDERS: dict[str, Callable[..., TaskData]] = {
    "digits": images.digits,
    "mnist": images.mnist,
    "cifar10": images.cifar10,
    "cifar10_lra": images.cifar10_lra,
    "listops": listops.listops,
}

__all__ = ["BUILDERS", "DataError", "Split", "TaskData", "TaskSpec", "build"]


def build(cfg: Mapping[str, Any], cache_dir: str | None = None) -> TaskData:
    """Build (or load from cache) the task named by `cfg["name"]`; other keys are its parameters."""
    params = dict(cfg)
    name = params.pop("name")
    if name not in BUILDERS:
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(sorted(BUILDERS))}")
    return cached({"name": name, **params}, lambda: BUILDERS[name](**params), cache_dir)

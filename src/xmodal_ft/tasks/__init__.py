"""Tasks: `build(task_cfg)` turns a task config into in-memory tensors plus a TaskSpec."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from xmodal_ft.tasks import images, listops, text
from xmodal_ft.tasks.base import DataError, Split, TaskData, TaskSpec
from xmodal_ft.tasks.cache import cached

BUILDERS: dict[str, Callable[..., TaskData]] = {
    "digits": images.digits,
    "mnist": images.mnist,
    "cifar10": images.cifar10,
    "cifar10_lra": images.cifar10_lra,
    "listops": listops.listops,
    **text.BUILDERS,
}

__all__ = ["BUILDERS", "DataError", "Split", "TaskData", "TaskSpec", "build"]


def build(
    cfg: Mapping[str, Any], cache_dir: str | None = None, tokenizer: str | None = None
) -> TaskData:
    """Build (or load from cache) the task named by `cfg["name"]`; other keys are its parameters.

    Text tasks need `tokenizer` (the model's hub id or local dir); it is part of the cache key.
    """
    params = dict(cfg)
    name = params.pop("name")
    if name not in BUILDERS:
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(sorted(BUILDERS))}")
    if name in text.BUILDERS:
        if tokenizer is None:
            raise DataError(
                f"task {name} is text and uses the model's own tokenizer, but the model has no "
                "path: set model.path=<hub id or dir with a tokenizer> (e.g. model=minilm)"
            )
        params["tokenizer"] = tokenizer
    return cached({"name": name, **params}, lambda: BUILDERS[name](**params), cache_dir)

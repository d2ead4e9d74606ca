"""Tasks: `build(task_cfg)` turns a task config into in-memory tensors plus a TaskSpec.

A task config names its builder in `_target_` (any importable function: no list to edit) and
holds the builder's keyword arguments; `name` labels the task. Builders that take a `tokenizer`
get the model's (its hub id or local dir). A config without `_target_` (in code) names a built-in
builder by `name`: the public builders of this package's modules (`BUILDERS`, found, not listed).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xmodal_ft.errors import importable, one_line
from xmodal_ft.tasks.base import DataError, Split, TaskData, TaskSpec
from xmodal_ft.tasks.cache import cached, tokenizer_key

__all__ = ["BUILDERS", "DataError", "Split", "TaskData", "TaskSpec", "build", "builder", "check"]


def __getattr__(name: str) -> Any:
    if name == "BUILDERS":  # {name: builder} of the built-in tasks, found in this package
        from xmodal_ft.config import task_builders

        return task_builders()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def builder(cfg: Mapping[str, Any]) -> Callable[..., TaskData]:
    """The function that `cfg["_target_"]` names, else the built-in builder called `name`."""
    target = cfg.get("_target_")
    if not target:
        from xmodal_ft.config import task_builders

        built_in = task_builders()
        if cfg.get("name") not in built_in:
            raise DataError(
                f"unknown task {cfg.get('name')!r}; choose one of: {', '.join(sorted(built_in))}, "
                "or set task._target_=<module.function> (docs/extending.md)"
            )
        return built_in[cfg["name"]]
    return importable(target, "task._target_", DataError)


def check(cfg: Mapping[str, Any], tokenizer: str | None = None) -> None:
    """Check `cfg`'s keys and types against its builder's signature, before any data is built."""
    from xmodal_ft.config import task_schema  # config imports every task module

    fn = builder(cfg)
    plain = OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)
    try:
        OmegaConf.merge(OmegaConf.structured(task_schema(fn)), plain)
    except OmegaConfBaseException as err:
        raise DataError(
            f"task {cfg.get('name')} ({fn.__module__}.{fn.__qualname__}): {one_line(str(err))}; "
            "its keys are the "
            f"builder's keyword arguments: {', '.join(_keys(fn))}"
        ) from err
    if "tokenizer" in inspect.signature(fn).parameters and tokenizer is None:
        raise DataError(
            f"task {cfg.get('name')} is text and uses the model's own tokenizer, but the model "
            "has no path: set model.path=<hub id or dir with a tokenizer> (e.g. model=minilm)"
        )


def build(
    cfg: Mapping[str, Any], cache_dir: str | None = None, tokenizer: str | None = None
) -> TaskData:
    """Build (or load from cache) the task of `cfg`: its `_target_` called with its other keys.

    Text tasks need `tokenizer` (the model's hub id or local dir); it is part of the cache key.
    """
    check(cfg, tokenizer)
    params = {k: v for k, v in cfg.items() if k not in ("_target_", "name")}
    fn = builder(cfg)
    key = {"name": cfg["name"], "_target_": f"{fn.__module__}.{fn.__qualname__}", **params}
    if "tokenizer" in inspect.signature(fn).parameters:
        params["tokenizer"] = tokenizer
        key["tokenizer"] = tokenizer_key(tokenizer)  # type: ignore[arg-type]
    return cached(key, lambda: fn(**params), cache_dir)


def _keys(fn: Callable[..., Any]) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "tokenizer"]

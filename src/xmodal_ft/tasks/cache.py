"""Tokenize once: keep built tasks in memory for the process and on disk across processes."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xmodal_ft.atomic import atomic_path
from xmodal_ft.tasks.base import TaskData

log = logging.getLogger(__name__)
CACHE_VERSION = 1
_memory: dict[str, TaskData] = {}


def cache_key(params: dict[str, Any]) -> str:
    """A short stable hash of a task's build parameters."""
    blob = json.dumps({"v": CACHE_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached(params: dict[str, Any], make: Callable[[], TaskData], cache_dir: str | None) -> TaskData:
    """Return the task built from `params`, from memory, then disk, else `make()` and store it."""
    key = f"{params['name']}-{cache_key(params)}"
    if key in _memory:
        return _memory[key]
    path = Path(cache_dir).expanduser() / f"{key}.pt" if cache_dir else None
    data = _load(path) if path is not None and path.exists() else None
    if data is None:
        data = make()
        if path is not None:
            _save_atomic(data, path)
    _memory[key] = data
    return data


def _load(path: Path) -> TaskData | None:
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # a corrupt cache file is rebuilt, never trusted
        log.warning("ignoring unreadable task cache %s (%s); rebuilding", path, err)
        return None


def _save_atomic(data: TaskData, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(data, tmp)

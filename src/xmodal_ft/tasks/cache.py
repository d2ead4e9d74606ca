"""Tokenize once: keep built tasks in memory for the process and on disk across processes.

A task's cache file is `<cache_dir>/<name>-<key>.pt`, the key a hash of its build parameters; a
tokenizer enters the key by its content (`tokenizer_key`), not by where it is installed. Files
are written atomically with the umask's mode. Deleting the cache dir (or any file in it) is safe:
a missing or unreadable file is rebuilt.
"""

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
CACHE_VERSION = 2
_memory: dict[str, TaskData] = {}
# Files of a saved model dir that make no tokenizer: weights are left out of tokenizer_key.
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")


def cache_key(params: dict[str, Any]) -> str:
    """A short stable hash of a task's build parameters."""
    blob = json.dumps({"v": CACHE_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenizer_key(path: str) -> str:
    """What identifies a tokenizer in a cache key: a hub id as given; for a local directory a hash
    of its top-level files but weights (a copy installed elsewhere gives the same key)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return path
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        if file.suffix in _WEIGHTS or file.name.startswith("."):
            continue
        digest.update(file.name.encode() + b"\0")
        digest.update(file.read_bytes())
    return f"dir:{digest.hexdigest()[:16]}"


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

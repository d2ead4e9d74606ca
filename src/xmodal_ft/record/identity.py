"""A run's identity: the hash of its config, the name of its multirun directory and of its
checkpoint file, and the config resolvers that name run dirs (`register_resolvers`)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# Root keys and group choices that do not change a run's results: left out of its config hash
# and, through conf/config.yaml's `${not_hashed:}`, out of its multirun directory name (so a
# relaunch with progress=false still finds its runs). `sweep=<option>` only sets Hydra's sweeper;
# `threads` changes speed and at most the last digits (a resumed run keeps its count: threads.py).
NOT_HASHED = frozenset(
    {
        "cache_dir",
        "checkpoint_every",
        "debug",
        "log_every",
        "logger",
        "optuna_trial",
        "progress",
        "sweep",
        "threads",
    }
)
# A multirun directory name: the job's overrides as typed when short and path-safe, else a
# readable cut plus a hash of the whole (same overrides, same directory).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._,=+-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")
MAX_NAME = 96


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a resolved config, ignoring keys that do not change results."""
    kept = {k: v for k, v in config.items() if k not in NOT_HASHED}
    if kept.get("pruner", 0) is None:  # off: the hash of a config from before the key existed
        del kept["pruner"]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_file(run_dir: Path, config: dict[str, Any]) -> Path:
    """Where the run of `config` in `run_dir` keeps its resumable checkpoint."""
    return run_dir / f"checkpoint-{config_hash(config)}.pt"


def run_key(override_dirname: str) -> str:
    """Hydra resolver: a job's sweep subdir from its overrides (same overrides, same dir).

    `lr=0.001,seed=1` stays as it is; a name longer than MAX_NAME or holding characters outside
    `A-Za-z0-9._,=+-` (paths, lists, quotes) becomes its safe part cut short plus `-<hash>`.
    """
    if not override_dirname:
        return "defaults"
    if len(override_dirname) <= MAX_NAME and _SAFE_NAME.fullmatch(override_dirname):
        return override_dirname
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("_", override_dirname)[: MAX_NAME - len(digest) - 1].strip("._-")
    return f"{readable}-{digest}" if readable else digest


def register_resolvers() -> None:
    """conf/config.yaml's resolvers: `${run_key:..}` (hydra.sweep.subdir) and `${not_hashed:}`
    (the keys left out of run-dir names)."""
    OmegaConf.register_new_resolver("run_key", run_key, replace=True)
    OmegaConf.register_new_resolver("not_hashed", lambda: sorted(NOT_HASHED), replace=True)

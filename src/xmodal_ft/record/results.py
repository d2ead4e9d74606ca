"""A run's results.json: written atomically when the run ends, read by relaunches and reports."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xmodal_ft.atomic import atomic_path

RESULTS = "results.json"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())


def write_results(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write a run's results atomically to `<run_dir>/results.json`."""
    path = run_dir / RESULTS
    write_json_atomic(path, payload)
    return path


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The results of a finished run in `run_dir`, or None when absent, partial or unreadable."""
    try:
        payload = json.loads((run_dir / RESULTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("status") == "complete" else None


def complete(run_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The results in `run_dir` when they are complete results of the config of `config_hash`
    (the run need not train again), else None."""
    done = read_results(run_dir)
    return done if done is not None and done.get("config_hash") == config_hash else None

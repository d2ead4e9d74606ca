"""Run records: atomic results.json, and trackers that log metrics per step (local files)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

RESULTS = "results.json"
METRICS = "metrics.jsonl"


class Tracker(Protocol):
    """Where a run's metrics go: `log(values, step)` during training, `close()` at the end."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class LocalTracker:
    """Appends one JSON line per logged step to `<run_dir>/metrics.jsonl`."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = (run_dir / METRICS).open("a", encoding="utf-8")

    def log(self, values: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()

    def summary(self, values: dict[str, Any]) -> None:
        """The local summary is results.json itself, written by `write_results`."""

    def close(self) -> None:
        self._file.close()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(payload, file, indent=2, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_results(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write a run's results atomically to `<run_dir>/results.json`."""
    path = run_dir / RESULTS
    write_json_atomic(path, payload)
    return path

"""The runs of a sweep without complete results (failed, killed, still running), and what each
run dir shows of why: the report lists them, never averages them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml

from xmodal_ft.record.results import RESULTS
from xmodal_ft.record.trackers import METRICS
from xmodal_ft.report_types import Failure


def unfinished(payload: Any) -> bool:
    """A results.json of a run that ended without results (its status says how)."""
    return isinstance(payload, dict) and payload.get("status", "complete") != "complete"


def failed_runs(dirs: list[Path]) -> list[Failure]:
    """The runs under `dirs` that have no complete results: a results.json whose status is not
    `complete` (with its error), or a run dir (Hydra's `.hydra/`, a metrics.jsonl or a
    checkpoint) with no results.json in it or below it (its seeds' dirs)."""
    failures = []
    for directory in dirs:
        if not directory.is_dir():
            continue
        results = sorted(directory.rglob(RESULTS))
        for path in results:
            try:
                payload = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable: a skipped file
            if unfinished(payload):
                error = str(payload.get("error") or "").strip() or "no error recorded"
                failures.append(
                    Failure(path.parent, _overrides(path.parent), str(payload["status"]), error)
                )
        marks = (".hydra", METRICS, "checkpoint-*.pt")
        run_dirs = {p.parent for mark in marks for p in directory.rglob(mark)}
        with_results = {d for path in results for d in (path.parent, *path.parents)}
        with_runs_below = {d for run_dir in run_dirs for d in run_dir.parents}  # a job's seeds
        for run_dir in sorted(run_dirs - with_results - with_runs_below):
            failures.append(
                Failure(run_dir, _overrides(run_dir), "no results.json", _traces(run_dir))
            )
    return failures


def _overrides(run_dir: Path) -> str:
    """The run's command-line overrides (Hydra's `.hydra/overrides.yaml` of it or its job dir)."""
    for directory in (run_dir, run_dir.parent):
        try:
            overrides = yaml.safe_load((directory / ".hydra" / "overrides.yaml").read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(overrides, list):
            return ",".join(map(str, overrides))
    return ""


def _traces(run_dir: Path) -> str:
    """What a run dir without results shows: the job log's last error, the last logged step,
    a checkpoint to resume from."""
    traces = []
    for log_file in sorted(run_dir.glob("*.log")):  # Hydra's job log, e.g. train.log
        errors = [line for line in _lines(log_file) if "[ERROR]" in line]
        if errors:
            traces.append(errors[-1].split("] - ", 1)[-1].strip())
    for line in reversed(_lines(run_dir / METRICS)):  # the last complete record
        with contextlib.suppress(ValueError, KeyError, TypeError):
            traces.append(f"last logged step {int(json.loads(line)['step'])}")
            break
    if any(run_dir.glob("checkpoint-*.pt")):
        traces.append("a checkpoint: relaunching into this sweep dir resumes it")
    return "; ".join(traces) or "nothing logged: failed before training, or still starting"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []

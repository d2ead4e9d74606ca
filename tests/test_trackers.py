"""Trackers: local files by default, a W&B offline run with config, metrics and summary."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from conftest import make_cfg
from xmodal_ft import report, run
from xmodal_ft.record import trackers
from xmodal_ft.record.results import write_results


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Records of a W&B run file (LevelDB-style log: 7-byte header, 32 KiB blocks of chunks)."""
    raw, pos, chunk, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(raw):
        room = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7]) if room >= 7 else (0, 0, 0)
        if room < 7 or (length == 0 and kind == 0):
            pos += room
            continue
        if pos + 7 + length > len(raw):  # a chunk still being written
            break
        chunk += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            out.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return out


def finished_records(run_dir: Path, timeout_s: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """Records of the one W&B run file under `run_dir`, once its exit record is on disk.

    `run.finish()` returns before W&B's service process has flushed the file, so read until the
    exit record has landed (or fail after `timeout_s`).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        [run_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        records = wandb_records(run_file)
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def items(update) -> dict:
    """{key: value} of W&B history/summary/config items (slashed keys come as nested keys)."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}


def test_wandb_offline_run_has_config_metrics_and_best_summary(tmp_path) -> None:
    cfg = make_cfg("variant=unfrozen_random", "logger=wandb", "logger.project=test")
    run(cfg, run_dir=tmp_path, sweep="sweep-1", name="lr=0.001,seed=0")
    results = json.loads((tmp_path / "results.json").read_text())
    records = finished_records(tmp_path)
    [meta] = [r.run for r in records if r.HasField("run")]
    assert (meta.run_group, meta.display_name, meta.project) == (
        "sweep-1",
        "lr=0.001,seed=0",
        "test",
    )
    assert list(meta.tags) == ["digits", "tiny_gpt2", "unfrozen_random", "fixed"]
    config = items(meta.config.update)
    assert config["lr"] == 1e-3 and config["task"]["name"] == "digits"
    history = [items(r.history.item) for r in records if r.HasField("history")]
    assert [h["_step"] for h in history if "val/acc" in h] == [0, 3, 6]
    summary: dict = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(items(r.summary.update))
    for key in ("val/acc", "test/acc", "best_step"):
        assert summary[key] == results[key]
    local = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    wandb_val = [(h["_step"], h["val/acc"]) for h in history if "val/acc" in h]
    assert [(r["step"], r["val/acc"]) for r in local if "val/acc" in r] == wandb_val  # both kept


def test_unknown_logger_lists_the_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown logger 'nope'; choose one of: local, wandb"):
        trackers.build_tracker({"name": "nope"}, tmp_path, {})


def test_report_logs_its_table_and_plots_to_a_wandb_offline_run(tmp_path) -> None:
    for seed, (lr, val) in enumerate([(1e-4, 0.5), (1e-3, 0.7)]):
        run_dir = tmp_path / "runs" / str(seed)
        names = ("mnist", "gpt2", "fpt", "fixed")
        config = {g: {"name": n} for g, n in zip(report.GROUP, names, strict=True)}
        payload = {"status": "complete", "metric": "acc", "val/acc": val, "test/acc": val}
        payload |= {"config": {**config, "lr": lr, "seed": 0}, "best_step": 1, "history": []}
        write_results(run_dir, payload)
    runs, _ = report.load_runs([tmp_path / "runs"])
    paths = report.write(report.aggregate(runs), tmp_path / "out", [])
    report.log_to_wandb(paths, "reports")
    records = finished_records(tmp_path / "out")  # beside the report
    [meta] = [r.run for r in records if r.HasField("run")]
    assert (meta.project, meta.job_type) == ("reports", "report")
    logged = {}
    for r in records:
        if r.HasField("history"):
            logged |= items(r.history.item)
    assert (logged["results/_type"], logged["results/nrows"]) == ("table-file", 1)
    images = {k.split("/")[0] for k, v in logged.items() if v == "image-file"}
    assert images == {"lr_mnist_gpt2", "curves_mnist_gpt2"}

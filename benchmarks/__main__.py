"""python -m benchmarks [--quick] [--sections throughput,memory,...] [--out DIR] [--name NAME]

Runs every section side by side on this machine and writes <out>/<name>[-quick].{md,json}
(default: benchmarks/results/<host>[-quick]). Run it from the repository root.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from itertools import groupby
from pathlib import Path
from typing import Any

from benchmarks import hardware, report, suite
from benchmarks.cases import ROOT
from benchmarks.faults import faults
from benchmarks.lockstep import cases as lockstep_cases
from benchmarks.lockstep import lockstep_sweeps
from benchmarks.optuna_workers import optuna_workers
from benchmarks.scale_out import scale_out
from benchmarks.sweep import sweep_overhead
from xmodal_ft import engine

log = logging.getLogger("benchmarks")
SECTIONS = (
    "throughput", "memory", "sweep", "lockstep", "scale-out", "optuna", "optimisations", "scaling",
    "faults",
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if importlib.util.find_spec("accelerate") is None and "throughput" in args.sections:
        sys.exit('the HF Trainer comparison needs accelerate: pip install -e ".[bench]"')
    start = time.perf_counter()
    device = engine.select_device()
    out: dict[str, Any] = {"quick": args.quick, "machine": hardware.describe(device)}
    stem = f"{args.name or platform.node()}{'-quick' if args.quick else ''}"
    out["peak_flops"] = hardware.peak_matmul_flops(device)
    log.info("matmul peak %.1f GFLOP/s", out["peak_flops"] / 1e9)
    for section in args.sections:
        if section == "sweep":
            out["sweep"] = sweep_overhead(max_steps=20 if args.quick else 100)
        elif section == "lockstep":
            out["lockstep"] = lockstep_sweeps(args.quick, args.cases)
        elif section == "scale-out":
            out["scale-out"] = scale_out(args.quick)
        elif section == "faults":
            out["faults"] = faults(args.quick)
        elif section == "optuna":
            out["optuna"] = optuna_workers(args.quick)
        else:
            out[section] = _run_jobs(suite.SECTIONS[section](args.quick))
        out["seconds"] = time.perf_counter() - start
        _, md = report.write(out, args.out, stem)  # after each section: partial results survive
        log.info("%s done at %.0f s", section, out["seconds"])
    print(md.read_text())


def _run_jobs(jobs: list[suite.Job]) -> list[list[dict[str, Any]]]:
    """Each tool of a job in its own fresh worker process, so that its memory, allocator and
    caches are its own; jobs with the same non-empty group share one process."""
    results = []
    for _, members in groupby(jobs, key=lambda j: j.group or id(j)):
        batch = list(members)
        if batch[0].group:
            results += _worker(batch)
        else:
            (job,) = batch
            first, *others = job.tools
            rows = _worker([replace(job, tools=(first,))])[0]
            for tool in others:  # same model and shapes: the first tool's FLOP count holds
                rows += _worker([replace(job, tools=(tool,), count_flops=False)])[0]
            if "flops_per_step" in rows[0]:
                for row in rows[1:]:
                    row["flops_per_step"] = rows[0]["flops_per_step"]
            results.append(rows)
    return results


def _worker(jobs: list[suite.Job]) -> list[list[dict[str, Any]]]:
    """Run `jobs` in one `python -m benchmarks.worker` process: one result list per job."""
    payload = [
        {"case": asdict(j.case), "tools": list(j.tools), "count_flops": j.count_flops} for j in jobs
    ]
    log.info("running %s", ", ".join(f"{j.case.name} ({', '.join(j.tools)})" for j in jobs))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(payload)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {jobs[0].case.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few steps: ~10 min on 2 cores")
    parser.add_argument(
        "--sections",
        type=lambda s: s.split(","),
        default=list(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="report directory"
    )
    parser.add_argument("--name", help="report file stem (default: the host name)")
    parser.add_argument(
        "--cases",
        type=lambda s: set(s.split(",")),
        help="lockstep section: only these cases (comma-separated names, e.g. 'minilm fpt')",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    names = [case.name for case in lockstep_cases(args.quick, Path())]
    if args.cases and not args.cases <= set(names):
        parser.error(f"unknown cases {sorted(args.cases - set(names))}; choose from {names}")
    return args


if __name__ == "__main__":
    main()

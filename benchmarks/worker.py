"""One case measured in a fresh process, so its peak memory and warm caches are its own.

python -m benchmarks.worker '[{"tools": ["xmodal", "trainer"], "case": {...}}, ...]'
prints one JSON line (per job, a list of one result per tool) as the last line of stdout.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import hardware
from benchmarks.cases import Case, build_model, run_config, synthetic_task
from benchmarks.tools import BASELINES, run_xmodal
from xmodal_ft import engine, threads


def measure(case: Case, tools: list[str], count_flops: bool = True) -> list[dict[str, Any]]:
    """Train `case` with each tool from the same initial weights; throughput, losses, FLOPs.

    xmodal-ft runs first, as `train.py` runs it (its own threads setting); the other tools then
    train the same model with torch's default threads. Peak memory is the process's peak after
    each tool, so it is exact for the first tool only.
    """
    cfg, args = run_config(case)
    device = engine.select_device(cfg.device)
    data = synthetic_task(case, n_train=case.batch * (case.warmup + case.steps))
    model, results = None, []
    for tool in tools:
        if tool == "xmodal":
            result = run_xmodal(cfg, case)
            n_threads = torch.get_num_threads()  # as the run set it
            n_params, trainable = result["params"]["total"], result["params"]["trainable"]
        else:
            if model is None:
                model = build_model(case, data.spec, device)
                initial = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(initial)
            n_params = sum(p.numel() for p in model.parameters())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            n_threads = threads.set_threads(None)
            result = BASELINES[tool](model, data, case)
        timed = result["step_seconds"][case.warmup :]
        if len(timed) != case.steps:
            raise RuntimeError(f"{tool} ran {len(result['step_seconds'])} steps, expected more")
        step_s = min(timed)  # the least disturbed by other load on a shared machine
        results.append(
            {
                "tool": tool,
                "case": case.as_dict(),
                "overrides": args,  # train.py's, on a synthetic task of the case's shape
                "step_seconds": step_s,
                "median_step_seconds": statistics.median(timed),
                "first_step_seconds": result["step_seconds"][0],  # with compilation, if any
                "samples_per_s": case.batch / step_s,
                "tokens_per_s": case.batch * case.seq_len / step_s,
                "losses": result["losses"],
                "peak_memory_bytes": hardware.peak_memory_bytes(device),
                "params": n_params,
                "threads": n_threads,
                "trainable": trainable,
            }
        )
    if count_flops:  # one sample (FLOPs are linear in the batch), then scaled
        model = model or build_model(case, data.spec, device)
        x, y = data.train.x[:1].to(device), data.train.y[:1].to(device)

        def step() -> None:
            with engine.autocast(device):
                F.cross_entropy(model(x), y).backward()

        flops = hardware.count_flops(step) * case.batch
        for r in results:
            r["flops_per_step"] = flops
    return results


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    jobs = json.loads(argv[0])
    results = [
        measure(Case(**job["case"]), job["tools"], job.get("count_flops", True)) for job in jobs
    ]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])

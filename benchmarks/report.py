"""The benchmark report: Markdown tables and the raw JSON, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import optuna_workers
from xmodal_ft.record.results import write_json_atomic

GiB = 2**30


def markdown(report: dict[str, Any]) -> str:
    """All sections of `report` as Markdown."""
    machine = report["machine"]
    peak = report["peak_flops"]
    lines = [
        f"# xmodal-ft benchmark ({'quick' if report['quick'] else 'full'})",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} threads, torch {machine['torch']}, "
        f"device {machine['device']}{', ' + machine['gpu'] if 'gpu' in machine else ''}. "
        f"Measured dense matmul peak: {peak / 1e9:.1f} GFLOP/s. "
        f"Total time {report['seconds']:.0f} s.",
        "",
    ]
    if "throughput" in report:
        lines += _throughput(report["throughput"], peak)
    if "memory" in report:
        lines += ["## Peak memory", "", "| case | peak | step s |", "|---|---:|---:|"]
        for job in report["memory"]:
            r = job[0]
            lines.append(f"| {r['case']['name']} | {r['peak_memory_bytes'] / GiB:.2f} GiB "
                         f"| {r['step_seconds']:.1f} |")  # fmt: skip
        lines.append("")
    if "optimisations" in report:
        lines += ["## Optimisations (xmodal-ft engine, on vs off)", "",
                  "| setting | step s | first step s | samples/s | peak memory | first loss |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for job in report["optimisations"]:
            r = job[0]
            lines.append(f"| {r['case']['name']} | {r['step_seconds']:.3f} | "
                         f"{r['first_step_seconds']:.3f} | {r['samples_per_s']:.2f} | "
                         f"{r['peak_memory_bytes'] / GiB:.2f} GiB | "
                         f"{r['losses'][0]:.6f} |")  # fmt: skip
        lines.append("")
    if "scaling" in report:
        lines += ["## Size scaling (GPT-2 small FPT, batch 1)", "",
                  "| case | step s | GFLOP/step | % of peak |", "|---|---:|---:|---:|"]  # fmt: skip
        for job in report["scaling"]:
            r = job[0]
            gflop = r["flops_per_step"] / 1e9
            lines.append(f"| {r['case']['name']} | {r['step_seconds']:.3f} | {gflop:.1f} "
                         f"| {_efficiency(r, peak):.0f} % |")  # fmt: skip
        lines.append("")
    if "sweep" in report:
        s = report["sweep"]
        lines += ["## Sweep overhead", "", f"`{s['command']}`", "",
                  f"{s['runs']} runs in one process: wall {s['wall_seconds']:.1f} s, training "
                  f"{s['train_seconds']:.1f} s. Overhead per run: first "
                  f"{s['first_run_overhead_s']:.2f} s (interpreter, imports), later runs median "
                  f"{s['later_run_overhead_s']:.2f} s (max {s['later_run_overhead_max_s']:.2f} s; "
                  f"inside run() {s['in_run_overhead_s']:.2f} s).", ""]  # fmt: skip
    if "lockstep" in report:
        lines += _lockstep(report["lockstep"])
    if "scale-out" in report:
        lines += _scale_out(report["scale-out"])
    if "faults" in report:
        lines += _faults(report["faults"])
    if "optuna" in report:
        lines += optuna_workers.markdown(report["optuna"])
    return "\n".join(lines)


def _faults(section: dict[str, Any]) -> list[str]:
    """Per launcher: the faults injected and what they broke (goal: 0 in every column but the
    first and the last)."""
    lines = [
        "## Faults: sweeps under seeded random faults",
        "",
        f"A 4-run sweep (tiny_gpt2, digits) under each fault of `benchmarks/faults.py` (kill a "
        f"worker or the launcher, stop a worker past the liveness timeout of "
        f"{section['liveness_s']:.0f} s, EIO in lease writes, a duplicate launch, a relaunch), "
        f"each command bounded by {section['bound_s']:.0f} s; the Optuna rows: two workers "
        f"filling one study of {section.get('n_trials', 3)} trials (an lr of the grid's, both "
        "seeds) on one storage file. Runs differing: from the same run of the uninterrupted "
        "grid sweep; studies off: studies that did not end with exactly that many complete "
        "trials. Extra wall time: the mean scenario's commands (relaunches included) less the "
        "uninterrupted sweep's.",
        "",
        "| launcher | scenarios | faults injected | runs lost | runs trained twice "
        "| runs differing | crashed workers | hangs | studies off | uninterrupted s "
        "| extra wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        off = r.get("studies off")
        lines.append(
            f"| {r['launcher']} | {r['scenarios']} | {r['faults injected']} | {r['runs lost']} "
            f"| {r['runs trained twice']} | {r['runs differing']} | {r['crashed workers']} "
            f"| {r['hangs']} | {'–' if off is None else off} | {r['uninterrupted s']:.1f} "
            f"| {r['extra wall s (mean)']:.1f} |"
        )
    problems = [(o, p) for o in section["scenarios"] for p in o["problems"]]
    if problems:
        lines += ["", "Breaches:", ""]
        lines += [f"- {o['launcher']}, {o['fault']} (seed {o['seed']}): {p}" for o, p in problems]
    return [*lines, ""]


def _scale_out(section: dict[str, list[dict[str, Any]]]) -> list[str]:
    return _layouts(section["layouts"]) + _pruning(section["pruning"])


def _pruning(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### Pruned vs unpruned lockstep grid (tiny_gpt2, 9 LRs × 3 seeds)",
        "",
        "| pruner | runs pruned | run-steps | saved | wall s | chosen LR | its test acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pruner']} | {r['runs_pruned']} | {r['run_steps']:,} "
            f"| {100 * r['run_steps_saved']:.0f} % | {r['wall_seconds']:.1f} | {r['chosen_lr']:g} "
            f"| {r['chosen_test_acc']:.3f} ± {r['chosen_test_sem']:.3f} |"
        )
    return [*lines, ""]


def _layouts(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Scale-out: one grid sequentially, as one lockstep group, as groups on devices",
        "",
        "Same `train.py -m lr=... seed=0,1,2` grid, batch 8; wall time of the whole command. "
        "`max Δ val` = largest val acc difference to the sequential runs.",
        "",
        "| case | runs × steps | layout | wall s | runs/h | speed-up | worker processes |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for name, run in r["layouts"].items():
            lines.append(
                f"| {r['case']} | {r['runs']} × {r['steps']} | {name} "
                f"| {run['wall_seconds']:.1f} | {r['runs_per_hour'][name]:.0f} "
                f"| {r['speedup'][name]:.2f}x | {run['pids']} |"
            )
        lines.append(f"| | | max Δ val {r['max_val_delta']:.3f} | | | | |")
    return [*lines, ""]


def _lockstep(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Lockstep sweeps: sequential multirun vs `hydra/launcher=lockstep`",
        "",
        "Same `train.py -m lr=... seed=0,1,2` grid, batch 8, validation at the start and the end; "
        "wall time of the whole command (process start, data, models, training, validation, test, "
        "records). `max Δ val` = largest val acc difference between the two launchers' runs.",
        "",
        "| case | runs × steps | runs/h seq | runs/h lockstep | samples/s seq | samples/s lockstep "
        "| peak mem seq | peak mem lockstep | speed-up | max Δ val |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate, sps = r["runs_per_hour"], r["samples_per_s"]
        b, k = r["basic"], r["lockstep"]
        lines.append(
            f"| {r['case']} | {r['runs']} × {r['steps']} | {rate['basic']:.0f} "
            f"| {rate['lockstep']:.0f} | {sps['basic']:.1f} | {sps['lockstep']:.1f} "
            f"| {b['peak_memory_bytes'] / GiB:.2f} GiB | {k['peak_memory_bytes'] / GiB:.2f} GiB "
            f"| {r['speedup']:.2f}x | {r['max_val_delta']:.3f} |"
        )
    return [*lines, ""]


def write(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """`<stem>.json` (everything) and `<stem>.md` (the tables) in `out_dir`."""
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json_atomic(json_path, report)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(markdown(report) + "\n", encoding="utf-8")
    tmp.replace(md_path)
    return json_path, md_path


def _throughput(jobs: list[list[dict[str, Any]]], peak: float) -> list[str]:
    lines = [
        "## Training throughput: xmodal-ft vs HF Trainer (and a plain loop)",
        "",
        "Same model init, batches, order, Adam, LR and clipping; all dropout 0. Rates use each "
        "tool's fastest timed step (the least disturbed by other load; medians in the JSON). "
        "`loss Δ` = max |loss difference| to xmodal-ft over all steps. Each tool runs in its own "
        "process (peak memory is its own).",
        "",
        "| case | params (trainable) | tool | samples/s | tokens/s | vs Trainer | vs plain loop "
        "| % of peak | peak memory | loss Δ |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for job in jobs:
        by_tool = {r["tool"]: r for r in job}
        ours = by_tool["xmodal"]
        for r in job:
            ratios = {
                other: f"{r['samples_per_s'] / by_tool[other]['samples_per_s']:.2f}x"
                if other in by_tool and r is ours
                else ""
                for other in ("trainer", "naive")
            }
            delta = max(abs(a - b) for a, b in zip(r["losses"], ours["losses"], strict=True))
            lines.append(
                f"| {r['case']['name']} | {r['params'] / 1e6:.1f}M ({r['trainable'] / 1e6:.2f}M) "
                f"| {r['tool']} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} "
                f"| {ratios['trainer']} | {ratios['naive']} | {_efficiency(r, peak):.0f} % "
                f"| {r['peak_memory_bytes'] / GiB:.2f} GiB | {delta:.1e} |"
            )
    return [*lines, ""]


def _efficiency(r: dict[str, Any], peak: float) -> float:
    return 100 * r["flops_per_step"] / r["step_seconds"] / peak

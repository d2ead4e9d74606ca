"""The reproduction page's generated tables and statements about a study's shipped runs: test
accuracy beside the papers', every LR of a stage, the survey's rows, and what the runs' own
records say (budgets, best steps, early stopping, wall time). Each takes a runs dir."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from xmodal_ft import papers
from xmodal_ft.claims.cells import fmt_lr
from xmodal_ft.claims.rothermel import VARIANTS
from xmodal_ft.claims.survey import survey_row
from xmodal_ft.record.results import RESULTS
from xmodal_ft.report import aggregate, load_runs
from xmodal_ft.report_types import Run, Selection


def _selections(directory: str) -> list[Selection]:
    return aggregate(load_runs([Path(directory)])[0])


def _pm(mean_sem: tuple[float, float]) -> str:
    mean, sem = mean_sem
    return f"{100 * mean:.1f}" + ("" if math.isnan(sem) else f" ± {100 * sem:.1f}")


def _record(run: Run) -> dict:
    """The run's results.json (steps trained, early stopping, wall time)."""
    return json.loads((run.path / RESULTS).read_text(encoding="utf-8"))


def _budget(run: Run) -> str:
    config = run.config
    if config.get("max_epochs"):
        return f"{config['max_epochs']} epochs of batch {config['batch_size']}"
    if config.get("patience"):
        return f"early stopping, at most {config['max_steps']:,} steps"
    return f"{config['max_steps']:,} steps"


def accuracy(directory: str) -> str:
    """Test accuracy at the chosen LR per variant, beside Rothermel et al.'s GPT-2 row."""
    found = {s.group[2]: s for s in _selections(directory)}
    first = next(iter(found.values()))
    task, model = first.group[:2]
    published = {r["variant"]: f"{r['test_acc']} ± {r['err']}" if r["err"] else r["test_acc"]
                 for r in papers.rows("rothermel2021.csv")
                 if r["task"] == task and r["model"] == "gpt2"}  # fmt: skip
    ours = [f"{_pm(found[v].best.test)} (lr {fmt_lr(found[v].best.lr)})" for v in VARIANTS]
    return "\n".join([
        "| | " + " | ".join(VARIANTS) + " |",
        "|---" * (len(VARIANTS) + 1) + "|",
        f"| ours ({model}, {_budget(first.runs[0])}) | " + " | ".join(ours) + " |",
        "| paper (gpt2, to convergence) | " + " | ".join(published[v] for v in VARIANTS) + " |",
    ]) + "\n"  # fmt: skip


def per_lr(directory: str) -> str:
    """Every LR of every variant: validation and test accuracy, best step, steps run."""
    lines = ["| variant | LR | val | test | best step (mean) | steps run | stopped early |",
             "|---" * 7 + "|"]  # fmt: skip
    every = load_runs([Path(directory)])[0]
    for s in sorted(aggregate(every), key=lambda s: VARIANTS.index(s.group[2])):
        runs = defaultdict(list)
        for run in (r for r in every if r.group == s.group):
            runs[run.lr].append(run)
        for stats in s.per_lr:
            records = [_record(r) for r in runs[stats.lr]]
            steps = [r["steps"] for r in records]
            chosen = " **(chosen)**" if stats is s.best else ""
            early = sum(bool(r.get("stopped_early")) for r in records)
            lines.append(
                f"| {s.group[2]} | {fmt_lr(stats.lr)}{chosen} | {_pm(stats.val)} | "
                f"{_pm(stats.test)} | {stats.steps[0]:.0f} | {min(steps)}–{max(steps)} | "
                f"{early}/{len(records)} |"
            )
    return "\n".join(lines) + "\n"


def survey_table(directory: str) -> str:
    """Our test accuracy per survey row beside the survey's (SST-2)."""
    ours = {survey_row(s): s for s in _selections(directory)}
    task = next(iter(ours.values())).group[0]
    budget = _budget(next(iter(ours.values())).runs[0])
    lines = [f"| scheme | adapter | schedule | ours ({budget}) | survey (BERT) |", "|---" * 5 + "|"]
    for r in papers.rows("survey_finetuning.csv"):
        key = (r["scheme"], r["adapter"], r["schedule"])
        if r["task"] == task and key in ours:
            mean = statistics.fmean(run.tests["acc"] for run in ours[key].runs)
            sem = statistics.stdev(run.tests["acc"] for run in ours[key].runs) / math.sqrt(
                len(ours[key].runs)
            )
            lines.append(f"| {' | '.join(key)} | {_pm((mean, sem))} | "
                         f"{100 * float(r['val_acc']):.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def facts(directory: str) -> str:
    """What the runs' records say: the grid, the data, the budget, best steps, early stopping,
    and wall time, as sentences."""
    runs = load_runs([Path(directory)])[0]
    selections = aggregate(runs)
    records = {r.path: _record(r) for r in runs}
    config, task = runs[0].config, runs[0].config["task"]
    groups = Counter(r.group for r in runs)
    lrs, seeds = {r.lr for r in runs}, {r.seed for r in runs}
    lines = [
        f"- {len(runs)} runs: {len(groups)} settings, {len(lrs)} LR{'s' if len(lrs) > 1 else ''} "
        f"({', '.join(fmt_lr(lr) for lr in sorted(lrs))}), {len(seeds)} seeds each; "
        f"{_budget(runs[0])}, validation every {config['eval_every']} steps.",
        f"- Data: {task['n_train']:,} training examples{_cut(task)}; validation on "
        f"{config['val_subset']:,} held-out examples; test on {_test_size(runs[0], records):,} "
        "examples.",
        _best_steps(runs, selections, records),
        _wall(runs, records),
    ]
    if config.get("patience"):
        lines.append(_early(runs, records))
    paper = papers.budget(task["name"], task["n_train"])
    if paper is not None:
        lines.append(f"- The papers' budget: {paper.text}.")
    return "\n".join(lines) + "\n"


def _cut(task: dict) -> str:
    """How a task's examples are cut into tokens, where its config says."""
    if task.get("patch_size"):
        return f" ({task['patch_size']}×{task['patch_size']} patches)"
    return f" (cut at {task['max_len']} tokens)" if task.get("max_len") else ""


def _test_size(run: Run, records: dict[Path, dict]) -> int:
    return records[run.path].get("test_examples") or run.config["task"]["n_test"]


def _best_steps(runs: list[Run], selections: list[Selection], records: dict[Path, dict]) -> str:
    """Where the runs had their best validation, against the last step they trained."""
    chosen = [r.best_step for s in selections for r in s.runs]
    steps = Counter(r.best_step for r in runs)
    text = (f"- Best validation step at the chosen LRs: {min(chosen)}–{max(chosen)} "
            f"({len(chosen)} runs). Over all {len(runs)} runs: ")  # fmt: skip
    if runs[0].config.get("patience"):
        return text + f"{min(steps)}–{max(steps)}."
    last = max(record["steps"] for record in records.values())
    early = last - 2 * runs[0].config["eval_every"]
    before = sum(n for step, n in steps.items() if step <= early)
    return text + f"{steps.get(last, 0)} at the last step ({last}), {before} by step {early}."


def _wall(runs: list[Run], records: dict[Path, dict]) -> str:
    """Wall time per setting: its slowest run's (a lockstep group's runs end together)."""
    by_setting: dict[str, float] = defaultdict(float)
    for r in runs:
        setting = _setting(r, runs)
        by_setting[setting] = max(by_setting[setting], records[r.path]["wall_seconds"] / 60)
    parts = ", ".join(f"{g} {m:.1f}" for g, m in by_setting.items())
    return f"- Wall time (minutes, each setting's slowest run): {parts}."


def _setting(run: Run, runs: list[Run]) -> str:
    """The variant, or the scheme where the runs differ in schemes."""
    return run.group[2] if len({r.group[3] for r in runs}) == 1 else run.group[3]


def _early(runs: list[Run], records: dict[Path, dict]) -> str:
    """Runs stopped early; of those that reached the budget, how far past their best."""
    budget = runs[0].config["max_steps"]
    full = [r for r in runs if not records[r.path].get("stopped_early")]
    past = []
    for r in full:
        vals = [h[f"val/{r.metric}"] for h in records[r.path]["history"] if f"val/{r.metric}" in h]
        past.append((100 * (max(vals) - vals[-1]), r))
    passed = sorted(d for d, _ in past if d > 0)
    at_best = [f"{r.group[2]} at {fmt_lr(r.lr)} (seed {r.seed})" for d, r in past if d <= 0]
    text = f"- {len(runs) - len(full)} of {len(runs)} runs stopped early; {len(full)} reached the "
    text += f"budget of {budget:,} steps"
    if passed:
        text += (
            f": {len(passed)} past their best by {passed[0]:.1f}–{passed[-1]:.1f} validation points"
        )
    if at_best:
        text += f", {len(at_best)} at their best at the last validation: {', '.join(at_best)}"
    return text + "."

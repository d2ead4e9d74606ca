"""The report's tables, written atomically: results.csv (the chosen LRs), results_per_lr.csv
(every LR), test_table.csv and report.md (Rothermel et al.'s Table 1 shape, steps to the best
validation metric and to match FPT's, pruned and unfinished runs); `write` adds the plots."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from xmodal_ft import report_compare
from xmodal_ft.atomic import atomic_path
from xmodal_ft.record.results import RESULTS
from xmodal_ft.report_types import GROUP, Failure, Selection, mean_sem

REFERENCE = "fpt"  # the paper's steps metric: steps to match this variant's best


def _fmt(mean_and_sem: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    mean, sem = mean_and_sem
    sem_text = "n/a" if math.isnan(sem) else f"{sem * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {sem_text}"


def write(
    selections: list[Selection],
    out: Path,
    skipped: list[str],
    paper: dict[tuple[str, str, str], float] | None = None,
    failures: list[Failure] | None = None,
) -> list[Path]:
    """Write results.csv (the chosen LRs), results_per_lr.csv (every LR), test_table.csv,
    report.md and PNG plots into `out`, each atomically; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _write_csv(selections, out / "results.csv", paper),
        _write_per_lr_csv(selections, out / "results_per_lr.csv"),
        _write_test_table(selections, out / "test_table.csv", paper),
        _write_markdown(selections, out / "report.md", skipped, paper, failures or []),
    ]
    from xmodal_ft import report_plots  # matplotlib loads only when there is something to plot

    paths += report_plots.lr_curves(selections, out)
    paths += report_plots.training_curves(selections, out)
    return paths


def _write_text(path: Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as file:
        file.write(text)
    return path


def _write_rows(path: Path, rows: list[list[Any]]) -> Path:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return _write_text(path, text.getvalue())


def _write_csv(selections: list[Selection], path: Path, paper: dict | None) -> Path:
    fields = [*GROUP, "metric", "lr", "n_seeds", "val_mean", "val_sem", "test_mean", "test_sem"]
    fields += ["steps_mean", "steps_sem"]
    fields += ["paper_test", "paper_diff"] if paper is not None else []
    rows = [fields]
    for s in selections:
        b = s.best
        row = [*s.group, s.metric, b.lr, len(b.seeds), *b.val, *b.test, *b.steps]
        if paper is not None:
            value, diff = report_compare.value(paper, s), report_compare.diff(paper, s)
            row += ["" if value is None else value, "" if diff is None else diff]
        rows.append(row)
    return _write_rows(path, rows)


def _write_per_lr_csv(selections: list[Selection], path: Path) -> Path:
    """Every LR of every group: mean ± SEM of val and test over seeds (what an accuracy-vs-LR
    plot is made from); `chosen` marks the LR of the best mean validation metric."""
    fields = [*GROUP, "metric", "lr", "n_seeds", "seeds", "val_mean", "val_sem", "test_mean"]
    fields += ["test_sem", "steps_mean", "steps_sem", "chosen", "pruned"]
    rows: list[list[Any]] = [fields]
    for s in selections:
        for p in s.per_lr:
            seeds = " ".join(map(str, p.seeds))
            chosen = int(p is s.best)
            rows.append([*s.group, s.metric, p.lr, len(p.seeds), seeds, *p.val, *p.test,
                         *p.steps, chosen, int(p.pruned)])  # fmt: skip
    return _write_rows(path, rows)


def _pivot(selections: list[Selection]) -> dict[tuple[str, str], dict[str, dict[str, Selection]]]:
    """{(model, scheme): {task: {variant: selection}}}: Rothermel et al. Table 1 shape."""
    tables: dict[tuple[str, str], dict[str, dict[str, Selection]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for s in selections:
        task, model, variant, scheme = s.group
        tables[(model, scheme)][task][variant] = s
    return tables


def _write_test_table(selections: list[Selection], path: Path, paper: dict | None) -> Path:
    table: list[list[Any]] = []
    for (model, scheme), rows in _pivot(selections).items():
        variants = sorted({v for cells in rows.values() for v in cells})
        table.append(["model", "scheme", "task", *variants])
        for task, cells in sorted(rows.items()):
            table.append(
                [model, scheme, task, *(_cell(cells.get(v), paper, False) for v in variants)]
            )
    return _write_rows(path, table)


def _cell(s: Selection | None, paper: dict | None, with_lr: bool = True) -> str:
    if s is None:
        return ""
    text = _fmt(s.best.test) + (f" (lr {s.best.lr:.0e})" if with_lr else "")
    return text + (report_compare.cell_suffix(paper, s) if paper is not None else "")


def _write_markdown(
    selections: list[Selection],
    path: Path,
    skipped: list[str],
    paper: dict | None,
    failures: list[Failure],
) -> Path:
    lines = ["# Sweep report", ""]
    lines += [
        "Test metric (×100) at the LR with the best mean validation metric, mean ± SEM over "
        "seeds; chosen LR in parentheses"
        + ("; published numbers in brackets, Δ = ours − published." if paper is not None else "."),
        "",
    ]
    match = f"gradient steps to match {REFERENCE}'s best validation metric (Rothermel et al.)"
    for (model, scheme), rows in _pivot(selections).items():
        variants = sorted({v for cells in rows.values() for v in cells})
        tables = [
            ("test", lambda s, _: _cell(s, paper) + (" †" if s is not None and s.excluded else "")),
            ("gradient steps to the best validation metric", lambda s, _: _steps(s)),
        ]
        if any(REFERENCE in cells for cells in rows.values()):
            tables.append((match, lambda s, cells: _steps_to_match(s, cells.get(REFERENCE), paper)))
        for title, cell in tables:
            lines += [f"## {model}, scheme {scheme}: {title}", ""]
            lines += ["| task | " + " | ".join(variants) + " |"]
            lines += ["|---" * (len(variants) + 1) + "|"]
            for task, cells in sorted(rows.items()):
                row = " | ".join(cell(cells.get(v), cells) for v in variants)
                lines += [f"| {task} | {row} |"]
            lines += [""]
    lines += _pruned(selections)
    lines += _thread_counts(selections)
    if failures:
        lines += _failures(failures, sum(len(p.seeds) for s in selections for p in s.per_lr))
    if skipped:
        lines += ["## Skipped files", "", *(f"- {line}" for line in skipped), ""]
    return _write_text(path, "\n".join(lines))


def _pruned(selections: list[Selection]) -> list[str]:
    """† : the groups whose LR was chosen among unpruned LRs, with the pruned ones left out, or
    (every LR pruned) among the LRs pruned last."""
    pruned = [s for s in selections if s.excluded]
    if not pruned:
        return []
    lines = [
        "## Pruned runs",
        "",
        "† A pruner (`pruner=...`, a departure from the papers' full grid) stopped some LRs' "
        "runs before their budget; the LR is chosen among the others. Left out of the choice:",
        "",
    ]
    for s in pruned:
        at = [f"{lr:.0e} (step {', '.join(map(str, steps))})" for lr, steps in s.excluded.items()]
        lines.append(f"- {' / '.join(s.group)}: lr {', '.join(at)}")
        if s.all_pruned:
            lines.append(f"  - every LR was pruned: lr {s.best.lr:.0e} is the best of the LRs "
                         "pruned last, not a run of the full budget")  # fmt: skip
        for lr, steps in s.uneven.items():
            lines.append(f"  - lr {lr:.0e}: seeds pruned at different steps ({seed_steps(steps)})")
    return [*lines, ""]


def seed_steps(steps: tuple[tuple[int, int | None], ...]) -> str:
    """`seed 0 at step 5, seed 1 not pruned`."""
    return ", ".join(
        f"seed {seed} " + (f"at step {step}" if step is not None else "not pruned")
        for seed, step in steps
    )


def _thread_counts(selections: list[Selection]) -> list[str]:
    """The groups whose runs trained on different thread counts (`threads` is not hashed)."""
    mixed = [s for s in selections if len(s.threads) > 1]
    if not mixed:
        return []
    lines = [
        "## Thread counts",
        "",
        "Runs of these groups trained on different numbers of torch threads (`threads`, not part "
        "of the config hash: a relaunch on another machine or core set keeps finished runs), "
        "which changes results in the last digits; rerun them with one `threads=N` to compare "
        "them exactly:",
        "",
    ]
    return [*lines, *(f"- {' / '.join(s.group)}: {thread_counts(s.threads)}" for s in mixed), ""]


def thread_counts(threads: dict[int, int]) -> str:
    """`{2: 3, 1: 1}` as "3 runs on 2 threads, 1 run on 1 thread"."""

    def runs(n: int) -> str:
        return f"{n} run{'s' * (n != 1)}"

    return ", ".join(f"{runs(n)} on {t} thread{'s' * (t != 1)}" for t, n in threads.items())


def _failures(failures: list[Failure], complete: int) -> list[str]:
    """A table of the runs without complete results, which the tables above leave out."""
    lines = [
        "## Runs without complete results",
        "",
        f"{len(failures)} of {len(failures) + complete} runs have no complete {RESULTS} (failed, "
        "killed, or still running) and are left out of the tables above.",
        "",
        "| run dir | overrides | status | error |",
        "|---|---|---|---|",
    ]
    for f in failures:
        cells = (str(f.path), f.run, f.status, f.error)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return [*lines, ""]


def _steps(s: Selection | None) -> str:
    return "" if s is None else _fmt(s.best.steps, scale=1.0, digits=0)


def _steps_to_match(s: Selection | None, reference: Selection | None, paper: dict | None) -> str:
    """Mean ± SEM over the seeds that reach the reference's best (how many, if not all)."""
    if s is None or reference is None:
        return ""
    steps = report_compare.matched_steps(s, reference)
    reached = [float(n) for n in steps if n is not None]
    text = _fmt(mean_sem(reached), scale=1.0, digits=0) if reached else "not reached"
    if reached and len(reached) < len(steps):
        text += f" ({len(reached)}/{len(steps)} seeds)"
    return text + report_compare.steps_suffix(paper, s)

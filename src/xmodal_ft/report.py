"""Multirun report: best LR by mean validation metric over seeds, test mean ± SEM, tables, plots.

    python -m xmodal_ft.report multirun/2026-01-01/12-00-00 [more dirs] [--out DIR]
        [--compare rothermel2021|survey] [--wandb PROJECT]

Runs are grouped by (task, model, variant, scheme); the scheme is labelled with its adapter,
schedule and optimizer where they are not the defaults (`fixed+houlsby+sgd`). Within a group, the
LR with the best mean validation metric (the task's first metric, e.g. `acc` or `mcc`) over seeds
is chosen and its test metric is reported as mean ± standard error of the mean (SEM) over seeds.
LRs whose runs a pruner stopped (`pruner=...`) are marked and left out of the choice, and the
report says so (†).
Runs without complete results (failed, killed, still running) are listed, not averaged.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from xmodal_ft import report_compare
from xmodal_ft.atomic import atomic_path
from xmodal_ft.labels import own_optimizer
from xmodal_ft.record.identity import NOT_HASHED
from xmodal_ft.record.results import RESULTS
from xmodal_ft.record.trackers import METRICS
from xmodal_ft.report_types import Failure, LrStats, Run, Selection

log = logging.getLogger(__name__)

GROUP = ("task", "model", "variant", "scheme")
# Config keys that may differ between runs averaged or compared within a group.
FREE_KEYS = NOT_HASHED | {"lr", "seed", "seeds", "device", "eval_batch_size"}
# Published numbers shipped in xmodal_ft/data (copied verbatim from the papers' tables).
PAPERS = {
    "rothermel2021": "rothermel2021.csv",
    "paper": "rothermel2021.csv",
    "survey": "survey_finetuning.csv",
}
REFERENCE = "fpt"  # the paper's steps metric: steps to match this variant's best


class ReportError(ValueError):
    """Results that cannot be reported; the message says what to fix."""


def load_runs(dirs: list[Path]) -> tuple[list[Run], list[str]]:
    """Every complete results.json under `dirs`, and one line per file skipped (with why).

    Results of runs that did not finish (a status other than complete) are not skipped files:
    `failed_runs` lists them. Without any complete run the error lists those failures.
    """
    runs, skipped = [], []
    for directory in dirs:
        if not directory.is_dir():
            raise ReportError(f"{directory} is not a directory: pass multirun dirs of train.py -m")
        for path in sorted(directory.rglob(RESULTS)):
            try:
                payload = json.loads(path.read_text(encoding="utf-8"))
                if _unfinished(payload):
                    continue
                runs.append(_parse(path, payload))
            except (OSError, ValueError, KeyError, TypeError) as err:
                skipped.append(f"{path}: {err.__class__.__name__}: {err}")
                log.warning("skipped %s: %s", path, err)
    if not runs:
        where = ", ".join(map(str, dirs))
        failures = failed_runs(dirs)
        if failures:
            lines = [f"  {f.path}: {f.status}: {f.error}" for f in failures]
            raise ReportError(
                f"no complete {RESULTS} under {where}: {len(failures)} run(s) did not finish\n"
                + "\n".join(lines)
            )
        found = f" ({len(skipped)} unreadable)" if skipped else ""
        raise ReportError(
            f"no complete {RESULTS} under {where}{found}: run a sweep first,"
            " e.g. python train.py -m sweep=lr_grid"
        )
    return runs, skipped


def _unfinished(payload: Any) -> bool:
    """A results.json of a run that ended without results (its status says how)."""
    return isinstance(payload, dict) and payload.get("status", "complete") != "complete"


def _parse(path: Path, payload: Any) -> Run:
    if not isinstance(payload, dict) or payload.get("status") != "complete":
        raise ValueError("not a complete run (status != 'complete')")
    config, metric = payload["config"], payload.get("metric", "acc")
    return Run(
        path=path.parent,
        group=(*(str(config[g]["name"]) for g in GROUP[:3]), scheme_label(config["scheme"])),
        lr=float(config["lr"]),
        seed=int(config["seed"]),
        metric=metric,
        val=float(payload[f"val/{metric}"]),
        test=float(payload[f"test/{metric}"]),
        best_step=int(payload["best_step"]),
        history=list(payload.get("history", [])),
        config=config,
        tests={k.removeprefix("test/"): float(v) for k, v in payload.items() if k[:5] == "test/"},
        test_examples=payload.get("test_examples"),
        pruned_at=payload.get("pruned_at"),
        threads=payload.get("threads"),
    )


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
            if _unfinished(payload):
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


def scheme_label(scheme: dict[str, Any]) -> str:
    """The scheme's name, then its adapter, schedule and optimizer where not the defaults."""
    name = str(scheme["name"])
    own = own_optimizer(name)
    values = [scheme.get("adapter", "none"), scheme.get("schedule", "constant")]
    values.append(scheme.get("optimizer") or own)
    defaults = ["none", "constant", own]
    return "+".join([name, *(v for v, d in zip(values, defaults, strict=True) if v != d)])


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n)); SEM is nan for one value."""
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, sem


def aggregate(runs: list[Run]) -> list[Selection]:
    """Per group: stats per LR and the LR with the best mean validation metric."""
    groups: dict[tuple[str, str, str, str], list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.group].append(r)
    selections = []
    for group, members in sorted(groups.items()):
        _check_compatible(group, members)
        by_lr: dict[float, list[Run]] = defaultdict(list)
        for r in members:
            by_lr[r.lr].append(r)
        per_lr = []
        for lr, at_lr in sorted(by_lr.items()):
            seeds = [r.seed for r in at_lr]
            if len(set(seeds)) != len(seeds):
                paths = ", ".join(str(r.path) for r in at_lr)
                raise ReportError(f"{group} lr={lr} has duplicate seeds {seeds} ({paths})")
            per_lr.append(
                LrStats(
                    lr,
                    tuple(sorted(seeds)),
                    mean_sem([r.val for r in at_lr]),
                    mean_sem([r.test for r in at_lr]),
                    mean_sem([float(r.best_step) for r in at_lr]),
                    any(r.pruned_at is not None for r in at_lr),
                )
            )
        kept = [s for s in per_lr if not s.pruned] or per_lr  # a pruner keeps an LR or more
        best = max(kept, key=lambda s: s.val[0])  # ties: the smallest LR (first maximum)
        excluded = {
            s.lr: tuple(sorted({r.pruned_at for r in by_lr[s.lr] if r.pruned_at is not None}))
            for s in per_lr
            if s.pruned
        }
        threads = dict(sorted(Counter(r.threads for r in members if r.threads).items()))
        selections.append(
            Selection(group, members[0].metric, per_lr, best, by_lr[best.lr], excluded, threads)
        )
    return selections


def _check_compatible(group: tuple[str, ...], runs: list[Run]) -> None:
    """Runs of one group may differ only in LR, seed and output settings."""
    first = runs[0]
    for other in runs[1:]:
        if other.metric != first.metric:
            raise ReportError(
                f"mixed metrics in {group}: {first.metric!r} ({first.path}) and "
                f"{other.metric!r} ({other.path})"
            )
        keys = sorted(_differences(first.config, other.config))
        if keys:
            raise ReportError(
                f"incompatible runs in {group}: {', '.join(keys)} differ between {first.path} "
                f"and {other.path}; report them separately (one dir per setting)"
            )


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set(a) | set(b)
    if not prefix:
        keys -= FREE_KEYS
    found = set()
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            found |= _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            found.add(f"{prefix}{k}")
    return found


def load_paper(name: str) -> report_compare.Published:
    """Published numbers of `--compare name` in [0, 1]: rothermel2021 (alias paper) by (task,
    model, variant); survey by (task, scheme, adapter, schedule)."""
    if name not in PAPERS:
        raise ReportError(f"unknown --compare {name!r}; choose one of: {', '.join(PAPERS)}")
    return report_compare.Published(PAPERS[name])


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
    """† : the groups whose LR was chosen among unpruned LRs, with the pruned ones left out."""
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
    return [*lines, ""]


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
    return [*lines, *(f"- {' / '.join(s.group)}: {_counts(s.threads)}" for s in mixed), ""]


def _counts(threads: dict[int, int]) -> str:
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


# pragma: no mutate start  (W&B's service does not survive mutmut's fork; see docs/testing.md)
def log_to_wandb(paths: list[Path], project: str) -> None:
    """Log the tables (as W&B Tables) and plots (as images) to a W&B run of job type report."""
    import wandb

    run = wandb.init(project=project, job_type="report", dir=paths[0].parent)  # beside the report
    try:
        for path in paths:
            if path.suffix == ".png":
                run.log({path.stem: wandb.Image(str(path))})
            elif path.suffix == ".csv" and path.stem in ("results", "results_per_lr"):
                with path.open(encoding="utf-8") as file:
                    rows = list(csv.reader(file))
                run.log({path.stem: wandb.Table(columns=rows[0], data=rows[1:])})
    finally:
        run.finish()


# pragma: no mutate end


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xmodal-report", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun dirs (searched recursively)")
    parser.add_argument("--out", type=Path, help="output dir (default: <first dir>/report)")
    parser.add_argument("--compare", choices=sorted(PAPERS), help="add published numbers")
    parser.add_argument("--wandb", metavar="PROJECT", help="also log tables and plots to W&B")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        runs, skipped = load_runs(args.dirs)
        selections = aggregate(runs)
    except ReportError as err:
        parser.exit(2, f"xmodal-report: error: {err}\n")
    for s in selections:
        if s.excluded:
            lrs = ", ".join(f"{lr:.0e}" for lr in s.excluded)
            log.info("%s: pruned lr %s left out of the choice (†)", " / ".join(s.group), lrs)
    for s in selections:
        if len(s.threads) > 1:
            log.warning("%s: runs trained on different thread counts (%s): results may differ "
                        "in the last digits", " / ".join(s.group), _counts(s.threads))  # fmt: skip
    failures = failed_runs(args.dirs)
    for f in failures:
        log.warning("no complete results: %s (%s): %s", f.path, f.status, f.error)
    paper = load_paper(args.compare) if args.compare else None
    out = args.out or args.dirs[0] / "report"
    paths = write(selections, out, skipped, paper, failures)
    if args.wandb:
        log_to_wandb(paths, args.wandb)
    log.info("%d runs in %d groups -> %s (%d files skipped, %d runs without results)", len(runs),
             len(selections), out, len(skipped), len(failures))  # fmt: skip


if __name__ == "__main__":
    main()

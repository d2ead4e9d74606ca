"""Multirun report: best LR by mean validation metric over seeds, test mean ± SEM, tables, plots.

    python -m xmodal_ft.report multirun/2026-01-01/12-00-00 [more dirs] [--out DIR]
        [--compare rothermel2021|survey] [--wandb PROJECT]

Runs are grouped by (task, model, variant, scheme); the scheme is labelled with its adapter,
schedule and optimizer where they are not the defaults (`fixed+houlsby+sgd`). Within a group, the
LR with the best mean validation metric (the task's first metric, e.g. `acc` or `mcc`) over seeds
is chosen and its test metric is reported as mean ± standard error of the mean (SEM) over seeds.
LRs whose runs a pruner stopped (`pruner=...`) are marked and left out of the choice, and the
report says so (†); where it stopped every LR, the choice is the best of those it stopped last,
and the report says that instead. An LR whose seeds a pruner stopped at different steps is named.
Runs without complete results (failed, killed, still running) are listed, not averaged.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from xmodal_ft import report_compare
from xmodal_ft.labels import own_optimizer
from xmodal_ft.record.identity import NOT_HASHED
from xmodal_ft.record.results import RESULTS
from xmodal_ft.report_failures import failed_runs, unfinished
from xmodal_ft.report_tables import seed_steps, thread_counts, write
from xmodal_ft.report_types import GROUP, LrStats, Run, Selection, mean_sem

log = logging.getLogger(__name__)

# Config keys that may differ between runs averaged or compared within a group.
FREE_KEYS = NOT_HASHED | {"lr", "seed", "seeds", "device", "eval_batch_size"}
# Published numbers shipped in xmodal_ft/data (copied verbatim from the papers' tables).
PAPERS = {
    "rothermel2021": "rothermel2021.csv",
    "paper": "rothermel2021.csv",
    "survey": "survey_finetuning.csv",
}


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
                if unfinished(payload):
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


def scheme_label(scheme: dict[str, Any]) -> str:
    """The scheme's name, then its adapter, schedule and optimizer where not the defaults."""
    name = str(scheme["name"])
    own = own_optimizer(name)
    values = [scheme.get("adapter", "none"), scheme.get("schedule", "constant")]
    values.append(scheme.get("optimizer") or own)
    defaults = ["none", "constant", own]
    return "+".join([name, *(v for v, d in zip(values, defaults, strict=True) if v != d)])


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
        best = _choose(per_lr, by_lr)
        excluded = {
            s.lr: tuple(sorted({r.pruned_at for r in by_lr[s.lr] if r.pruned_at is not None}))
            for s in per_lr
            if s.pruned
        }
        uneven = {
            lr: tuple(sorted((r.seed, r.pruned_at) for r in by_lr[lr]))
            for lr in excluded
            if len({r.pruned_at for r in by_lr[lr]}) > 1
        }
        threads = dict(sorted(Counter(r.threads for r in members if r.threads).items()))
        selections.append(
            Selection(
                group,
                members[0].metric,
                per_lr,
                best,
                by_lr[best.lr],
                excluded,
                threads,
                uneven,
            )
        )
    return selections


def _choose(per_lr: list[LrStats], by_lr: dict[float, list[Run]]) -> LrStats:
    """The LR with the best mean validation metric among those no pruner stopped (ties: the
    smallest LR); where a pruner stopped every LR, among those it stopped last."""
    kept = [s for s in per_lr if not s.pruned]
    if not kept:
        stop = {s.lr: max(r.pruned_at or 0 for r in by_lr[s.lr]) for s in per_lr}
        kept = [s for s in per_lr if stop[s.lr] == max(stop.values())]
    return max(kept, key=lambda s: s.val[0])


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
        name = " / ".join(s.group)
        if s.all_pruned:
            log.warning("%s: a pruner stopped every LR: lr %.0e is the best of those it stopped "
                        "last, not a run of the full budget (†)", name, s.best.lr)  # fmt: skip
        elif s.excluded:
            lrs = ", ".join(f"{lr:.0e}" for lr in s.excluded)
            log.info("%s: pruned lr %s left out of the choice (†)", name, lrs)
        for lr in s.uneven:
            log.warning("%s: lr %.0e: its seeds were pruned at different steps (%s)", name, lr,
                        seed_steps(s.uneven[lr]))  # fmt: skip
    for s in selections:
        if len(s.threads) > 1:
            counts = thread_counts(s.threads)
            log.warning("%s: runs trained on different thread counts (%s): results may differ "
                        "in the last digits", " / ".join(s.group), counts)  # fmt: skip
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

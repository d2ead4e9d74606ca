"""The cells a claim speaks of, from the report's selections: selections by (task, model) and row,
and the test accuracy of a selection at one LR as an `Estimate`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from xmodal_ft.report import ReportError
from xmodal_ft.report_types import LrStats, Selection
from xmodal_ft.significance import Estimate, estimate, from_sem


def cells(
    selections: Sequence[Selection], row: Callable[[Selection], tuple[str, ...]]
) -> dict[tuple[str, str], dict[tuple[str, ...], Selection]]:
    """Selections by (task, model) and their row; two selections claiming one row fail."""
    found: dict[tuple[str, str], dict[tuple[str, ...], Selection]] = {}
    for s in selections:
        task, model = s.group[:2]
        rows = found.setdefault((task, model), {})
        key = row(s)
        if key in rows:
            other = rows[key]
            raise ReportError(
                f"two settings claim the cell {task}, {model}, {'+'.join(key)}: "
                f"{other.runs[0].path.parent} ({', '.join(other.group[2:])}) and "
                f"{s.runs[0].path.parent} ({', '.join(s.group[2:])}); check one setting at a time"
            )
        rows[key] = s
    return found


def n_test_examples(s: Selection) -> int | None:
    """The test split's size as the runs recorded it, else as their config sets it."""
    run = s.runs[0]
    if run.test_examples:
        return run.test_examples
    n = run.config.get("task", {}).get("n_test")
    return int(n) if isinstance(n, int) and n > 0 else None


def at_stats(stats: LrStats, s: Selection) -> Estimate:
    """The test metric at one LR of `s`: over its seeds (one seed: over the test set)."""
    mean, sem = stats.test
    return from_sem(mean, sem, len(stats.seeds), n_test_examples(s))


def at_lr(s: Selection, lr: float) -> Estimate | None:
    """The test metric of `s` at `lr` (None when `lr` is not in its grid)."""
    stats = next((p for p in s.per_lr if math.isclose(p.lr, lr, rel_tol=1e-3)), None)
    return None if stats is None else at_stats(stats, s)


def of_runs(s: Selection, metric: str) -> Estimate:
    """Test `metric` at the chosen LR (e.g. accuracy where the first metric is MCC)."""
    try:
        values = [r.tests[metric] for r in s.runs]
    except KeyError:
        raise ReportError(f"{s.runs[0].path} has no test/{metric} in its results") from None
    return estimate(values, n_test_examples(s))


def shared_lrs(selections: Sequence[Selection]) -> list[float]:
    """The LRs every selection has in its grid, ascending (matched to 3 significant digits)."""
    grids = [{_key(p.lr): p.lr for p in s.per_lr} for s in selections]
    common = set.intersection(*(set(g) for g in grids))
    return sorted(grids[0][k] for k in common)


def _key(lr: float) -> str:
    return f"{lr:.3g}"


def fmt_lr(lr: float) -> str:
    """`1e-3`, `3.16e-4`: an LR as the grid writes it."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

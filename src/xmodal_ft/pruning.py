"""Pruning a lockstep group's LRs on validation passes: which LRs stop before their budget.

Opt-in (`pruner=halving` or `pruner=median`, conf/pruner/) and a departure from the papers'
protocol, which trains the full LR × seed grid. An LR is judged by its seeds' mean of the best
validation metric so far (the protocol picks the LR by the seed mean), so all seeds of an LR stop
together; a group with one LR is never pruned. A pass is a validation pass: pass 0 is step 0's.

- `Halving` (successive halving): at rungs `first_rung`, `first_rung·eta`, `first_rung·eta²`, …
  passes, keep the best ⌈n/eta⌉ of the n LRs still in the group and stop the others.
- `Median` (Optuna's MedianPruner over LRs): from pass `warmup` on, stop each LR whose value is
  below the median of the values of the LRs still in the group.

Decisions are a function of the runs' validation histories alone (`GroupPruner`): a group resumed
after a kill, given its pruned runs' histories, prunes at the same passes as the uninterrupted one.

`Pruner` is what the training loop asks after each validation pass; the recipe builds a group's
pruner in one place (`recipe.group.GroupRecipe.pruner`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from xmodal_ft.errors import UserError

if TYPE_CHECKING:
    from xmodal_ft.engine.run import Run


class Pruner(Protocol):
    """Which runs of a lockstep group stop before their budget, decided after each validation
    pass. The loop calls `prune(step, training)` after the pass at `step` (not after the last
    step): `training` are the group's runs still training, each with its validation records up
    to `step` in `run.state.history` ({"step": s, "val/<metric>": v, ...}). The runs returned
    stop now: they are tested with their best weights, leave the stack and are recorded as
    pruned at `step` (`run.pruned_at`, `pruned_at` in results.json)."""

    def prune(self, step: int, training: Sequence[Run]) -> list[Run]: ...


class Rule(Protocol):
    def prune(self, passes: int, values: Mapping[float, float]) -> set[float]:
        """The LRs to stop at pass `passes`, from each LR's value (higher is better)."""
        ...


@dataclass(frozen=True)
class Halving:
    """Successive halving: at each rung keep the top ⌈n/eta⌉ LRs (ties: the smaller LR)."""

    eta: int = 3
    first_rung: int = 1

    def __post_init__(self) -> None:
        if self.eta < 2 or self.first_rung < 1:
            raise UserError(
                f"pruner.eta={self.eta} must be >= 2 and pruner.first_rung={self.first_rung} "
                ">= 1 (e.g. pruner.eta=3 pruner.first_rung=1)"
            )

    def rungs(self, passes: int) -> bool:
        """Whether pass `passes` is a rung: first_rung · eta^k for some k >= 0."""
        rung = self.first_rung
        while rung < passes:
            rung *= self.eta
        return rung == passes

    def prune(self, passes: int, values: Mapping[float, float]) -> set[float]:
        if len(values) < 2 or not self.rungs(passes):
            return set()
        ranked = sorted(values, key=lambda lr: (-values[lr], lr))
        return set(ranked[math.ceil(len(ranked) / self.eta) :])


@dataclass(frozen=True)
class Median:
    """From pass `warmup` on, stop the LRs whose value is below the median of the LRs'."""

    warmup: int = 2

    def __post_init__(self) -> None:
        if self.warmup < 1:
            raise UserError(f"pruner.warmup={self.warmup} must be >= 1 (e.g. pruner.warmup=2)")

    def prune(self, passes: int, values: Mapping[float, float]) -> set[float]:
        if len(values) < 2 or passes < self.warmup:
            return set()
        median = statistics.median(values.values())
        return {lr for lr, value in values.items() if value < median}


RULES: dict[str, type[Halving] | type[Median]] = {"halving": Halving, "median": Median}


def build(cfg: Mapping[str, object]) -> Rule:
    """The rule of a `pruner` config node (conf/pruner/<name>.yaml)."""
    kind = RULES[str(cfg["name"])]
    keys = kind.__dataclass_fields__
    return kind(**{k: v for k, v in cfg.items() if k in keys})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Finished:
    """A run of the group that trains no more (results written): its LR, validation history
    and the step it was pruned at (None: it stopped early or ran its budget)."""

    lr: float
    history: Sequence[Mapping[str, float]]
    pruned_at: int | None = None


class GroupPruner:
    """A rule applied to one lockstep group, judging LRs by their seed means: `lrs` gives each
    of the group's runs its LR; `finished` holds the group's runs that trained before (a
    resumed group's pruned runs, or earlier chunks' runs), judged with the others. A run whose
    LR a finished run was pruned at stops at that pass too (at its first pass from then on):
    every seed of an LR stops at one pass, also where its seeds train in different chunks."""

    def __init__(
        self, rule: Rule, lrs: Mapping[Run, float], metric: str, finished: Sequence[Finished] = ()
    ):
        self.rule, self.lrs, self.key = rule, dict(lrs), f"val/{metric}"
        self.finished = list(finished)

    def prune(self, step: int, training: Sequence[Run]) -> list[Run]:
        """The runs of `training` to stop after the validation pass at `step`."""
        histories = [run.state.history for run in self.lrs]
        records = [
            *self.finished,
            *(Finished(lr, run.state.history, run.pruned_at) for run, lr in self.lrs.items()),
        ]
        passes = max(sum(1 for rec in h if rec["step"] <= step) for h in histories) - 1
        stopped = self.rule.prune(passes, lr_values(records, step, self.key))
        stopped |= pruned_by(self.finished, step)
        return [run for run in training if self.lrs[run] in stopped]


def pruned_by(finished: Sequence[Finished], step: int) -> set[float]:
    """The LRs a finished run was pruned at by `step`: their runs still training stop now (all
    seeds of an LR stop at one pass, also where they train in different chunks)."""
    return {f.lr for f in finished if f.pruned_at is not None and f.pruned_at <= step}


def lr_values(runs: Sequence[Finished], step: int, key: str) -> dict[float, float]:
    """Each LR's seed mean of the best `key` up to `step`, over the LRs none of whose runs was
    pruned before `step` (runs pruned at `step` count: their pass at `step` was scored)."""
    out = {r.lr for r in runs if r.pruned_at is not None and r.pruned_at < step}
    bests: dict[float, list[float]] = {}
    for run in runs:
        if run.lr not in out:
            scores = [rec[key] for rec in run.history if rec["step"] <= step]
            bests.setdefault(run.lr, []).append(max(scores))
    return {lr: statistics.fmean(scores) for lr, scores in bests.items()}

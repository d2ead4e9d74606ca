"""Optuna's pruners on a trial's validation passes, its seeds judged together (what hydra #1954
asks of Hydra's sweeper).

The sweeper (`hydra/sweeper=xmodal_optuna` with `hydra/sweeper/pruner=...`) gives each job its
trial's identity as a config key, `optuna_trial={storage: <url|path|null>, study: <name>,
number: <n>}` (left out of config hashes and run-dir names: `record.identity.NOT_HASHED`), so the
job finds its trial in the same process or under any launcher (SLURM jobs included). The job then
trains the trial's seeds as one lockstep group (`recipe.run`) and the group's pruner is a
`TrialPruner`: after each validation pass it reports, per trial, the seeds' mean of the best
validation metric so far (the value the trial returns at the end) at that training step, and
stops every seed of a trial Optuna's pruner says to stop. Their results.json then say `pruned`
and the sweeper tells the trial PRUNED. A trial another worker has meanwhile failed (judged dead)
is no longer reported; its runs train on.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from xmodal_ft import pruning

if TYPE_CHECKING:
    import optuna

    from xmodal_ft.engine.run import Run

log = logging.getLogger(__name__)
KEY = "optuna_trial"  # the root config key the sweeper sets on each job
PRUNER = "xmodal_pruner"  # the trial's system attribute holding hydra.sweeper.pruner's config
# In-memory studies (storage null) and their storages, by name.
_IN_PROCESS: dict[str, tuple[optuna.Study, optuna.storages.BaseStorage]] = {}


def share(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Let jobs in this process find in-memory `study` (the sweeper's, with its pruner)."""
    _IN_PROCESS[study.study_name] = study, storage


def override(storage: str | None, study: str, trial: optuna.trial.BaseTrial) -> str:
    """The override that gives a job its trial's identity."""
    where = "null" if storage is None else _quoted(storage)
    return f"{KEY}={{storage:{where},study:{_quoted(study)},number:{trial.number}}}"


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def judged_together(cfg: Mapping[str, Any]) -> bool:
    """Whether the job's seeds train as one group (its trial is pruned)."""
    return cfg.get(KEY) is not None


class TrialPruner:
    """The pruner (`pruning.Pruner`) of a lockstep group whose runs are the seeds of Optuna
    trials: `trials` gives each run its trial's identity, or None (never pruned); `done` holds
    runs of the group that trained before (a resumed trial's finished seeds, or an earlier
    chunk's where `max_runs` splits a trial's seeds), judged with the others by their LR; once
    one of them was pruned, the trial's later seeds stop at the same pass."""

    def __init__(
        self,
        trials: Mapping[Run, Mapping[str, Any] | None],
        metric: str,
        done: Sequence[pruning.Finished] = (),
    ) -> None:
        self.key, self.done = f"val/{metric}", list(done)
        self.members: dict[tuple, list[Run]] = {}
        for run, ident in trials.items():
            if ident is not None:
                key = (ident["storage"], ident["study"], int(ident["number"]))
                self.members.setdefault(key, []).append(run)
        self.links = {key: _Link(*key) for key in self.members}

    def prune(self, step: int, training: Sequence[Run]) -> list[Run]:
        """The runs of `training` to stop after the validation pass at `step`: every run of a
        trial Optuna's pruner stops."""
        stopped = []
        for key, runs in self.members.items():
            live = [run for run in runs if run in training]
            if not live or self.links[key].off:
                continue
            lr = float(runs[0].spec.cfg.lr)
            if lr in pruning.pruned_by(self.done, step):
                stopped += live  # an earlier chunk's seeds of the trial were pruned: these too
                continue
            seeds = [*(d.history for d in self.done if d.lr == lr),
                     *(run.state.history for run in runs)]  # fmt: skip
            if self.links[key].should_prune(self._values(seeds, step)):
                stopped += live
        return stopped

    def _values(
        self, seeds: Sequence[Sequence[Mapping[str, float]]], step: int
    ) -> dict[int, float]:
        """The trial's value after each pass up to `step`: its seeds' mean of their best
        validation metric so far."""
        steps = sorted({rec["step"] for history in seeds for rec in history if rec["step"] <= step})
        return {
            s: statistics.fmean(
                max(rec[self.key] for rec in history if rec["step"] <= s)
                for history in seeds
                if history and history[0]["step"] <= s
            )
            for s in steps
        }


class _Link:
    """One trial as its job sees it: reports intermediate values, asks the study's pruner."""

    def __init__(self, storage: str | None, study: str, number: int) -> None:
        import optuna
        from hydra.utils import instantiate

        self.number, self.off = number, False
        if storage is None:
            if study not in _IN_PROCESS:
                from xmodal_ft.errors import UserError

                raise UserError(
                    "hydra.sweeper.pruner with hydra.sweeper.storage=null needs the jobs in the"
                    " sweeper's process (the basic or lockstep launcher): set"
                    " hydra.sweeper.storage (a database URL or a journal file)"
                )
            found, store = _IN_PROCESS[study]
            trial_id = store.get_trial_id_from_study_id_trial_number(
                store.get_study_id_from_name(study), number
            )
        else:
            from hydra_plugins.xmodal_optuna_sweeper._storage import open_storage

            store = open_storage(storage)
            trial_id = store.get_trial_id_from_study_id_trial_number(
                store.get_study_id_from_name(study), number
            )
            pruner = instantiate(store.get_trial_system_attrs(trial_id)[PRUNER])
            found = optuna.load_study(study_name=study, storage=store, pruner=pruner)
        self.trial = optuna.trial.Trial(found, trial_id)
        self.reported = set(store.get_trial(trial_id).intermediate_values)

    def should_prune(self, values: Mapping[int, float]) -> bool:
        """Report the values of the steps not reported yet, then ask the pruner; a trial that
        is no longer running (failed by another worker) or a storage error is logged once and
        stops the reporting, never the training."""
        from optuna.exceptions import OptunaError

        try:
            for step in sorted(set(values) - self.reported):
                self.trial.report(values[step], step)
                self.reported.add(step)
            prune = self.trial.should_prune()
        except (OptunaError, OSError, RuntimeError) as err:
            self.off = True
            log.warning(
                "trial %d: its validation passes are no longer reported (%s); its runs train on",
                self.number, err,
            )  # fmt: skip
            return False
        if prune:
            log.info("trial %d: pruned by Optuna at step %d", self.number, max(values))
        return prune


def pruner(runs: Sequence[Run], metric: str, done: Sequence[pruning.Finished]) -> TrialPruner:
    """The `TrialPruner` of a lockstep group of trials' runs (`GroupRecipe.pruner`)."""
    return TrialPruner({run: _identity(run.spec.cfg.get(KEY)) for run in runs}, metric, done)


def _identity(node: Any) -> dict[str, Any] | None:
    if node is None:
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node

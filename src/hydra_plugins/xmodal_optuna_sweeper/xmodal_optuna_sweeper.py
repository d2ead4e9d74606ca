"""`hydra/sweeper=xmodal_optuna` (`sweep=optuna`): Optuna sweeps on a current Optuna, with
hydra-optuna-sweeper's keys and override grammar, whose study several workers — local processes,
SLURM jobs — fill together through one storage (a database or a journal file).

- `n_trials` counts the whole study, not each worker (`_budget`): workers started together, one
  after another or relaunched stop once the study has them.
- Liveness is the runs' leases (`_liveness`): another worker's running trial none of whose run
  dirs has had a live lease for `grace_period` s is failed and retried with its parameters (its
  run dirs, so it resumes from the dead worker's checkpoints), at most `max_retry` times.
- A job that returns no value (NaN: its runs were being trained by another worker's trial of the
  same parameters) is told FAIL and does not count towards `n_trials`; no outcome of a job, and
  no trial another worker finished first, stops the worker or the rest of its batch.
- `pruner` (hydra/sweeper/pruner=median|successive_halving|hyperband): Optuna's pruner stops a
  trial from its validation passes, its seeds judged together (`xmodal_ft.trial_pruning`).
- With a storage, each worker's sampler is reseeded at random (`sampler.seed` alone would make
  every worker draw the same values); with `storage: null` (one process) the seed holds.
"""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import XmodalOptunaSweeperConf  # noqa: F401 (stores the configs)


class XmodalOptunaSweeper(Sweeper):
    """Imports optuna only when a sweep uses it (Hydra imports every plugin at start-up)."""

    def __init__(self, **keys: Any) -> None:
        from ._impl import SharedStudySweeper

        self.sweeper = SharedStudySweeper(**keys)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)

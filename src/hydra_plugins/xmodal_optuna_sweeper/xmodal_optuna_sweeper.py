"""`hydra/sweeper=xmodal_optuna`: hydra-optuna-sweeper (its keys, samplers and search space) whose
study several workers — local processes, SLURM jobs — can fill together through one storage.

- `n_trials` counts the whole study, not each worker: the budget is the study's first `n_trials`
  fresh trials in trial-number order (`_budget`), so workers started together, one after another
  or relaunched stop once the study has them; a trial one asks past the budget (a race) is told
  FAIL with the system attribute `xmodal_excess` and never run.
- While a worker trains its trials, a thread records their heartbeats in the storage every
  `heartbeat_interval` s. Before each batch a worker fails the RUNNING trials of other workers
  whose heartbeat is older than `grace_period` s (a killed worker) and runs their retries: new
  trials with the same parameters (Optuna's `failed_trial` system attribute names the first one),
  up to `max_retry` times each. A retry replaces its trial in the budget; with the same `lr` it has
  the same run dir, so it resumes from the dead worker's checkpoint.
- With `wait_for_others`, a worker with no trial left waits for the other workers' RUNNING
  trials, so that the study ends complete even if they die (the retry runs here).
- With a storage, each worker's sampler is reseeded at random (`sampler.seed` alone would make
  every worker draw the same values); with `storage: null` (in-memory, one process) the sweep is
  hydra-optuna-sweeper's, seed included.
"""

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig


@dataclass
class XmodalOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.xmodal_optuna_sweeper.xmodal_optuna_sweeper.XmodalOptunaSweeper"
    heartbeat_interval: int = 60  # s between heartbeats of a worker's running trials
    grace_period: int = 180  # s without a heartbeat after which a trial's worker counts as dead
    max_retry: Optional[int] = 3  # noqa: UP045 (OmegaConf reads Optional); null: no cap
    wait_for_others: bool = True  # a worker done waits for others' running trials (retries them)


ConfigStore.instance().store(
    group="hydra/sweeper", name="xmodal_optuna", node=XmodalOptunaSweeperConf, provider="xmodal_ft"
)


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

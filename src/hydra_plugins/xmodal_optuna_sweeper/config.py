"""Config schemas of `hydra/sweeper=xmodal_optuna` and its groups `hydra/sweeper/sampler` (tpe,
random, grid, cmaes, nsgaii, qmc; motpe: TPE, which Optuna >= 4 runs for several objectives too)
and `hydra/sweeper/pruner` (median, successive_halving, hyperband). Keys and defaults are Optuna's
(https://optuna.readthedocs.io/en/stable/reference/samplers/index.html, .../pruners.html); the
sweeper's keys are hydra-optuna-sweeper's plus those of a study shared by several workers."""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

# OmegaConf reads `Optional[...]`, not `X | None`, in dataclasses on Python 3.10.
# ruff: noqa: UP045


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: Optional[bool] = None
    group: bool = False
    constant_liar: bool = True  # running trials count as bad guesses: workers spread out


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class GridSamplerConf:
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True  # its grid comes from hydra.sweeper.params (choice/range values)
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    consider_pruned_trials: bool = False
    restart_strategy: Optional[str] = None
    popsize: Optional[int] = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class MedianPrunerConf:
    """Stop a trial whose best value so far is below the median of earlier trials' at the
    same step (after `n_startup_trials` trials and `n_warmup_steps` training steps)."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    """Asynchronous successive halving: at rungs of min_resource × reduction_factor^k steps
    keep the top 1/reduction_factor of the trials that reached the rung."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    """Several successive-halving brackets of different aggressiveness (Li et al. 2018)."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class XmodalOptunaSweeperConf:
    _target_: str = "hydra_plugins.xmodal_optuna_sweeper.xmodal_optuna_sweeper.XmodalOptunaSweeper"
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}]
    )  # _self_ first: the chosen sampler and pruner fill the keys below
    sampler: Any = None
    pruner: Any = None  # null: trials run their whole budget
    direction: Any = "minimize"  # or maximize, or a list of them (several objectives)
    storage: Optional[str] = None  # null (memory), a database URL or a journal file path
    study_name: Optional[str] = None
    n_trials: int = 20  # trials of the whole study, whatever the number of workers
    n_jobs: int = 2  # trials per launch (run at once by a parallel launcher)
    max_failure_rate: float = 0.0  # of a batch's jobs that may raise before the sweep does
    params: Optional[dict[str, str]] = None  # the search space in override grammar
    custom_search_space: Optional[str] = None  # dotpath of fn(cfg, trial) suggesting more
    grace_period: float = 180.0  # s another worker's trial may show no live lease before retry
    max_retry: Optional[int] = 3  # retries of one trial whose worker died; null: no cap
    wait_for_others: bool = True  # a worker with no trial left waits for others' running ones
    max_wait: Optional[float] = None  # s it waits at most; null: while they stay live


STORE = ConfigStore.instance()
STORE.store(group="hydra/sweeper", name="xmodal_optuna", node=XmodalOptunaSweeperConf,
            provider="xmodal_ft")  # fmt: skip
for _name, _node in {
    "tpe": TPESamplerConf,
    "motpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "grid": GridSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsgaii": NSGAIISamplerConf,
    "qmc": QMCSamplerConf,
}.items():
    STORE.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="xmodal_ft")
for _name, _node in {
    "median": MedianPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "hyperband": HyperbandPrunerConf,
}.items():
    STORE.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="xmodal_ft")

"""Config schemas: the types and defaults of the root config and of every config group.

`register()` stores them in Hydra's ConfigStore under `schema/`: conf/config.yaml starts from
`config_schema`, and each group option's YAML from its group's schema
(`defaults: [/schema/<group>@_here_, _self_]`; tasks: `/schema/task/<builder>`), so Hydra checks
every key and type while composing (`lr=abc` or `scheme.decay=0.5` on scheme=fixed fail before
anything runs) and a YAML holds only what differs from its schema's defaults.

A task's schema is its builder's signature: the keyword parameters with their annotations and
defaults (`task_schema`); every public builder in `xmodal_ft.tasks` gets one. Other groups have
dataclasses here, which are also what the code reads (`models.ModelConfig`, ...).
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import pkgutil
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Builder parameters the recipe passes at run time (not config keys): the model's tokenizer.
RUNTIME_ARGS = ("tokenizer",)


@dataclass
class Config:
    """The root config: the groups' nodes and the root keys (values: conf/config.yaml)."""

    task: Any = MISSING
    model: Any = MISSING
    variant: Any = MISSING
    scheme: Any = MISSING
    logger: Any = MISSING
    pruner: Any = None  # null: every run trains its whole budget (the papers' protocol)
    lr: float = MISSING
    seed: int = MISSING
    batch_size: int = MISSING
    max_steps: int = MISSING
    max_epochs: int | None = MISSING
    eval_every: int = MISSING
    patience: int | None = MISSING
    grad_clip: float | None = MISSING
    eval_batch_size: int = MISSING
    log_every: int = MISSING
    val_subset: int | None = MISSING
    device: str = MISSING
    progress: bool = MISSING
    compile: bool = MISSING
    grad_checkpointing: bool = MISSING
    threads: Any = MISSING  # null (the cores this process may run on), a count, or "auto"
    cache_dir: str | None = MISSING
    checkpoint_every: int | None = MISSING
    seeds: list[int] | None = MISSING
    debug: bool = MISSING
    optuna_trial: Any = None  # set by hydra/sweeper=xmodal_optuna with a pruner (trial_pruning)


@dataclass
class ModelConfig:
    """A model group option: where the weights live and how to read the backbone's output.

    `_target_` builds the model: `(ModelConfig, TaskSpec, *, pretrained, seed) -> nn.Module`.
    """

    name: str = MISSING
    path: str | None = None  # hub id, save_pretrained dir or pkg://<module>; null: random `arch`
    arch: dict[str, Any] = field(default_factory=dict)  # AutoConfig.for_model(**arch) if no path
    pooling: str = "last"  # last (GPT-2) | first | mean | cls (a learned [CLS] on non-text inputs)
    causal: bool = True  # a decoder: right padding needs no attention mask
    dropout: float | None = None  # the backbone's dropouts; null: the checkpoint's
    attn_dropout: float | None = None  # attention dropout; null: as dropout; 0: fast SDPA path
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to AutoModel
    input_init: str = "default"  # default (PyTorch Linear) | orthogonal (Lu et al.: input_gain)
    input_gain: float = 1.41  # orthogonal init gain (Lu et al.'s orth_gain, about sqrt 2)
    input_dropout: float = 0.0  # dropout on the input embeddings (Lu et al.: 0.1)
    _target_: str = "xmodal_ft.models.build"


@dataclass
class VariantConfig:
    """A variant group option (Lu et al.): pretrained or random backbone, and what trains."""

    name: str = MISSING
    pretrained: bool = MISSING
    trainable: list[str] = MISSING  # parameter-name patterns (fnmatch)


@dataclass
class BaseSchemeConfig:
    """The keys every scheme has; `_target_` names the scheme's function (schemes.build).

    A scheme function: `(model, SchemeConfig, lr) -> (optimizer, on_epoch hook or None)`.
    """

    name: str = "fixed"
    adapter: str = "none"  # none | houlsby (Houlsby et al. 2019) | <module.function>
    reduction: int = 16  # adapter bottleneck = hidden size / reduction
    schedule: str = "constant"  # constant | slanted_triangular (ULMFiT, Howard & Ruder 2018)
    cut_frac: float = 0.1  # slanted triangular: fraction of steps spent rising
    ratio: float = 32.0  # slanted triangular: peak LR / floor LR
    optimizer: str | None = None  # adam | sgd (plain); null: the scheme's own (nesterov: sgd)
    _target_: str | None = None  # null: the built-in function called `name` (schemes.SCHEMES)


@dataclass
class DiscriminativeConfig(BaseSchemeConfig):
    decay: float = 1 / 2.6  # LR factor per layer group down from the top (ULMFiT)


@dataclass
class NesterovConfig(BaseSchemeConfig):
    momentum: float = 0.9  # SGD momentum (the common default; the survey states none)


@dataclass
class SchemeConfig(DiscriminativeConfig, NesterovConfig):
    """Every scheme's keys at once: what schemes.build reads (a scheme ignores the others)."""


@dataclass
class LoggerConfig:
    name: str = MISSING  # local: <run_dir>/metrics.jsonl and results.json only


@dataclass
class WandbLoggerConfig(LoggerConfig):
    project: str | None = "xmodal-ft"
    entity: str | None = None  # W&B team or user; null: your default entity
    group: str | None = None  # null: the sweep dir (multirun) or no group (single run)
    tags: list[str] = field(default_factory=list)  # besides task/model/variant/scheme
    mode: str | None = None  # online | offline | disabled; null: WANDB_MODE, else online


@dataclass
class HalvingConfig:
    """Successive halving of a lockstep group's LRs (pruning.Halving)."""

    name: str = "halving"
    eta: int = 3  # each rung keeps the best ⌈n/eta⌉ of the n LRs left
    first_rung: int = 1  # validation passes after step 0's to the first rung; then ×eta each


@dataclass
class MedianConfig:
    """Median stopping of a lockstep group's LRs (pruning.Median)."""

    name: str = "median"
    warmup: int = 2  # validation passes after step 0's before any LR is stopped


@dataclass
class TaskConfig:
    """What every task option has; the other keys are its builder's keyword parameters."""

    _target_: str = MISSING  # the builder: (**keys[, tokenizer]) -> tasks.TaskData
    name: str = MISSING


def task_schema(builder: Callable[..., Any]) -> type:
    """A task's schema from its builder: each keyword parameter, typed and with its default."""
    hints = typing.get_type_hints(builder)
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, field(default=f"{builder.__module__}.{builder.__qualname__}")),
        ("name", str, field(default=builder.__name__)),
    ]
    for param in inspect.signature(builder).parameters.values():
        if param.kind is not param.KEYWORD_ONLY or param.name in RUNTIME_ARGS:
            continue
        default = MISSING if param.default is param.empty else param.default
        hint = _schema_type(hints.get(param.name, Any))
        fields.append((param.name, hint, field(default=default)))
    title = "".join(word.capitalize() for word in builder.__name__.split("_"))
    return make_dataclass(f"{title}Task", fields, bases=(TaskConfig,))


def _schema_type(hint: Any) -> Any:
    """`hint` as a type OmegaConf checks: Sequence as list; mappings and unions of types as Any."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        kept = [a for a in args if a is not type(None)]
        inner = _schema_type(kept[0]) if len(kept) == 1 else Any
        return inner | None if len(kept) < len(args) and inner is not Any else inner
    if origin in (dict, collections.abc.Mapping):  # Any: OmegaConf cannot merge into a null dict
        return Any
    if origin in (list, tuple, collections.abc.Sequence):
        return list[_schema_type(args[0]) if args else Any]
    return hint if hint in (int, float, bool, str) else Any


def task_builders() -> dict[str, Callable[..., Any]]:
    """The public builders of the `xmodal_ft.tasks` modules: keyword-only functions that return
    TaskData, by function name (a new module there gets its schema without being listed)."""
    package = importlib.import_module("xmodal_ft.tasks")
    found: dict[str, Callable[..., Any]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, fn in vars(module).items():
            if _is_builder(fn, module.__name__) and not name.startswith("_"):
                if name in found:
                    raise RuntimeError(f"two task builders named {name}: rename one")
                found[name] = fn
    return found


def _is_builder(fn: Any, module: str) -> bool:
    if not inspect.isfunction(fn) or fn.__module__ != module:
        return False
    signature = inspect.signature(fn)
    kinds = {p.kind for p in signature.parameters.values()}
    returns = signature.return_annotation
    return kinds <= {inspect.Parameter.KEYWORD_ONLY} and returns in ("TaskData", _task_data())


def _task_data() -> type:
    from xmodal_ft.tasks.base import TaskData

    return TaskData


_registered = False


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (once); the config's resolvers are registered
    when the package is imported (`xmodal_ft/__init__.py`)."""
    global _registered
    if _registered:
        return
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="schema", name="model", node=ModelConfig)
    store.store(group="schema", name="variant", node=VariantConfig)
    store.store(group="schema/scheme", name="base", node=BaseSchemeConfig)
    store.store(group="schema/scheme", name="discriminative", node=DiscriminativeConfig)
    store.store(group="schema/scheme", name="nesterov", node=NesterovConfig)
    store.store(group="schema/logger", name="local", node=LoggerConfig)
    store.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)
    store.store(group="schema/pruner", name="halving", node=HalvingConfig)
    store.store(group="schema/pruner", name="median", node=MedianConfig)
    for name, builder in task_builders().items():
        store.store(group="schema/task", name=name, node=task_schema(builder))
    _registered = True

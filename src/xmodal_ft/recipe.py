"""One run as a recipe: task → model → variant → scheme → fit → record. DictConfig stops here."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from statistics import mean
from types import ModuleType
from typing import Any

import torch
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from torch import nn

from xmodal_ft import (
    allocator,
    checkpoint,
    engine,
    hub,
    labels,
    lease,
    logs,
    models,
    papers,
    pruning,
    runspec,
    schemes,
    tasks,
    threads,
    variants,
)
from xmodal_ft.engine import FitConfig, FitResult, TrainPlan
from xmodal_ft.errors import DEFAULT_LAUNCHER, LockstepError, UserError
from xmodal_ft.layout import Single, rng_state
from xmodal_ft.record import results, trackers
from xmodal_ft.runspec import RunSpec

log = logging.getLogger(__name__)


class ConfigError(UserError, ValueError):
    """An invalid configuration value; the message names the key to fix."""


_DEFERRED: ContextVar[list[list[RunSpec]] | None] = ContextVar("deferred", default=None)


def run(
    cfg: DictConfig,
    run_dir: Path | str,
    choices: Mapping[str, Any] | None = None,
    *,
    sweep: str | None = None,
    name: str | None = None,
) -> float:
    """Train and evaluate one configuration; write results.json; return the validation metric.

    Everything that needs no data is checked first (`check`). A run whose `run_dir` already
    holds complete results of the same config is skipped; one with a checkpoint continues from
    it. With `seeds: [..]`, each seed trains in `run_dir/seed_<s>` and the mean validation
    metric is returned (one Optuna trial = the mean over seeds).
    `sweep` and `name` label the run for trackers (W&B group = the sweep, name = the overrides).
    Inside `deferred()`, the runs are queued instead (and nan returned).
    """
    run_dir = Path(run_dir)
    logs.quiet()
    check(cfg)
    specs = runspec.of_config(cfg, run_dir, choices, sweep=sweep, name=name)
    queue = _DEFERRED.get()
    if queue is not None:
        queue.append(specs)
        return float("nan")
    values = [train([spec])[0] for spec in specs]
    if cfg.get("seeds"):
        log.info("mean validation metric over seeds %s: %.4f", list(cfg.seeds), mean(values))
    return mean(values)


@contextlib.contextmanager
def deferred() -> Iterator[list[list[RunSpec]]]:
    """Within the block, `run()` queues its runs (one list per call) instead of training them."""
    queue: list[list[RunSpec]] = []
    token = _DEFERRED.set(queue)
    try:
        yield queue
    finally:
        _DEFERRED.reset(token)


def train(
    specs: Sequence[RunSpec],
    launcher: str | None = None,
    max_runs: int | None = None,
    memory_share: float = 1.0,
) -> list[float]:
    """Train runs of one configuration (they may differ in lr and seed) together, in lockstep;
    return each run's validation metric. Runs whose directory holds complete results of the same
    config are skipped; so are runs whose lease (`xmodal_ft.lease`) a live worker holds (their
    value: nan). At most `max_runs` train at once (None: `lockstep.max_runs`, from the model, the
    batch shape and this process's `memory_share` of the device's free memory); `launcher` is
    recorded in results.json."""
    logs.quiet()
    values: dict[int, float] = {}
    earlier: list[pruning.Finished] = []  # the finished runs, for a pruner
    todo = [i for i, spec in enumerate(specs) if not _done(spec, values, i, earlier)]
    with contextlib.ExitStack() as leases:
        todo = [
            i for i in todo
            if _leased(specs[i], leases) and not _done(specs[i], values, i, earlier)
        ]  # fmt: skip
        if todo:
            _train_leased(specs, todo, values, launcher, max_runs, memory_share, earlier)
    return [values.get(i, math.nan) for i in range(len(specs))]


def _done(spec: RunSpec, values: dict[int, float], i: int, earlier: list[pruning.Finished]) -> bool:
    """Whether the run's directory holds complete results of its config (its value then goes
    into `values[i]`, its history into `earlier`)."""
    done = spec.finished()
    if done is None:
        return False
    log.info("%s holds complete results of this config: skipped", spec.run_dir)
    values[i] = done[f"val/{done['metric']}"]
    earlier.append(pruning.Finished(spec.cfg.lr, done["history"], done.get("pruned_at")))
    return True


def _leased(spec: RunSpec, leases: contextlib.ExitStack) -> bool:
    """Take the run's lease until `leases` closes; False (logged) when a live worker holds it."""
    try:
        leases.enter_context(lease.acquire(spec.run_dir))
    except lease.Held as held:
        log.info("%s: skipped", held)
        return False
    return True


def _train_leased(
    specs: Sequence[RunSpec],
    todo: list[int],
    values: dict[int, float],
    launcher: str | None,
    max_runs: int | None,
    memory_share: float,
    earlier: list[pruning.Finished],
) -> None:
    """Train the runs `todo` of `specs` (their leases held), in chunks of at most `max_runs`."""
    cfg = specs[todo[0]].cfg
    device = engine.select_device(cfg.device)
    tokenizer = hub.resolve_path(cfg.model.path) if cfg.model.path else None
    data = tasks.build(_plain(cfg.task), cache_dir=cfg.cache_dir, tokenizer=tokenizer)
    if max_runs is None and len(todo) > 1:
        model = _build_model(cfg, data, device)
        pretrained = bool(cfg.variant.pretrained)
        max_runs = _lockstep().max_runs(
            model, cfg.batch_size, data.spec.seq_len, device, pretrained, memory_share
        )
        log.info("lockstep: at most %d runs at once (lockstep.max_runs)", max_runs)
        del model
    for chunk in _chunks(todo, max_runs or 1):
        chunk_specs = [specs[i] for i in chunk]
        trained = _train(chunk_specs, data, device, launcher, earlier)
        values.update(zip(chunk, trained, strict=True))


def _chunks(indices: list[int], limit: int) -> list[list[int]]:
    """`indices` in order, cut into the fewest near-equal chunks of at most `limit`."""
    count = -(-len(indices) // limit)
    size, extra = divmod(len(indices), count)
    cuts = [0]
    for i in range(count):
        cuts.append(cuts[-1] + size + (i < extra))
    return [indices[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def _build_model(cfg: DictConfig, data: tasks.TaskData, device: torch.device) -> nn.Module:
    """The run's model (`model._target_`, models.build by default) on `device` with its
    variant's trainable parameters."""
    variant = variants.VariantConfig(**_plain(cfg.variant))
    model_cfg = models.ModelConfig(**_plain(cfg.model))
    model = _target(model_cfg._target_, "model._target_")(
        model_cfg, data.spec, pretrained=variant.pretrained, seed=cfg.seed
    )
    variants.apply(model, variant)
    return model.to(device)


def _train(
    specs: list[RunSpec],
    data: tasks.TaskData,
    device: torch.device,
    launcher: str | None,
    done: Sequence[pruning.Finished] = (),
) -> list[float]:
    started = time.time()
    cfg = specs[0].cfg
    if len(specs) > 1 and cfg.grad_checkpointing:  # recomputed dropout would redraw run masks
        raise LockstepError(f"grad_checkpointing=true: {DEFAULT_LAUNCHER}")
    if len(specs) > 1 and cfg.compile:  # untested over stacked layers and per-run generators
        raise LockstepError(f"compile=true: set compile=false, or {DEFAULT_LAUNCHER}")
    scheme = schemes.SchemeConfig(**_plain(cfg.scheme))
    steps_per_epoch = len(data.train) // cfg.batch_size
    fit_cfgs = [_fit_config(spec.cfg, steps_per_epoch) for spec in specs]
    first = specs[0]
    if first.sweep is not None or (first.choices or {}).get("experiment"):  # a sweep or a preset
        papers.warn_if_short(
            cfg.task.name, fit_cfgs[0].max_steps, cfg.batch_size, data.full_train_size
        )
    built: list[nn.Module] = []
    plans, rng_states = [], []
    for spec in specs:
        model = _build_model(spec.cfg, data, device)
        total_steps = fit_cfgs[0].max_steps
        plans.append(schemes.build(model, scheme, lr=spec.cfg.lr, total_steps=total_steps))
        rng_states.append(rng_state())  # what this run's dropout starts from
        if built:
            _lockstep().share_frozen(model, built)
        built.append(model)
    paths = [_checkpoint_path(spec) for spec in specs]
    resumed = [
        checkpoint.resumed(path, model, plan.optimizer)
        for path, model, plan in zip(paths, built, plans, strict=True)
    ]
    starts = [0 if state is None else state.step for state in resumed]
    if len(set(starts)) > 1:  # a checkpoint that reads but does not fit its run: it starts afresh
        log.warning(
            "runs resume at steps %s: each step's runs train as a group of their own", starts
        )
        del built, plans, model, resumed
        return _by_start(specs, starts, data, device, launcher, done)
    params = plans[0].params
    counts = [state.threads for state in resumed if state is not None and state.threads]
    thread_count = threads.set_threads(cfg.threads, resumed=counts)
    del resumed
    allocator.keep_freed_memory()
    layout = Single(built[0]) if len(built) == 1 else _lockstep().Stacked(built, rng_states)
    models.speed_up(layout.model, grad_checkpointing=cfg.grad_checkpointing, compile=cfg.compile)
    log.info("%s", banner(specs, data, params, device, fit_cfgs[0].max_steps))
    metric = data.spec.metrics[0]
    tags = [str(cfg[g].name) for g in ("task", "model", "variant", "scheme")]
    run_trackers, keys = [], []
    try:
        for spec, start in zip(specs, starts, strict=True):
            config = _plain(spec.cfg)
            keys.append(spec.config_hash)
            meta = {"run_dir": spec.run_dir, "config": config, "sweep": spec.sweep,
                    "name": spec.name, "tags": tags, "start_step": start}  # fmt: skip
            run_trackers.append(trackers.build_tracker(_plain(cfg.logger), spec.run_dir, meta))
        _check_checkpoint_space(paths, built, plans)

        def finished(r: int, result: FitResult) -> None:  # as soon as run r stops training
            payload = _results(specs[r], params, result, device, time.time() - started)
            payload.update(config_hash=keys[r], metric=metric, test_examples=len(data.test),
                           threads=thread_count)  # fmt: skip
            if launcher is not None:
                payload["launcher"] = launcher
            run_trackers[r].summary(payload)
            results.write_results(specs[r].run_dir, payload)
            if paths[r] is not None:
                paths[r].unlink(missing_ok=True)
            log.info(
                "test %s = %.4f (results in %s)", metric, result.test[metric], specs[r].run_dir
            )

        pruner = _pruner(cfg, specs, metric, done)
        fitted = engine.fit_runs(
            layout, plans, data, fit_cfgs, run_trackers, paths, pruner, finished
        )
    finally:
        layout.close()
        for tracker in run_trackers:
            tracker.close()
    return [result.best_val[metric] for result in fitted]


def _lockstep() -> ModuleType:
    """`xmodal_ft.lockstep`, imported by groups of runs only: a single run needs neither it nor
    the newer transformers it imports."""
    return importlib.import_module("xmodal_ft.lockstep")


def _pruner(
    cfg: DictConfig, specs: Sequence[RunSpec], metric: str, done: Sequence[pruning.Finished]
) -> pruning.GroupPruner | None:
    """The pruner of a lockstep group (`pruner=<rule>`; `done`: its runs that trained before)."""
    if cfg.get("pruner") is None:
        return None
    if len(specs) + len(done) == 1:
        log.warning("pruner=%s prunes lockstep groups: a lone run is not pruned", cfg.pruner.name)
        return None
    lrs = [float(spec.cfg.lr) for spec in specs]
    return pruning.GroupPruner(pruning.build(_plain(cfg.pruner)), lrs, metric, done)


def _checkpoint_path(spec: RunSpec) -> Path | None:
    """Where the run keeps its checkpoint (None: it keeps none)."""
    if not spec.cfg.checkpoint_every:
        return None
    return spec.checkpoint_file


def _by_start(
    specs: list[RunSpec],
    starts: list[int],
    data: tasks.TaskData,
    device: torch.device,
    launcher: str | None,
    done: Sequence[pruning.Finished],
) -> list[float]:
    """Train the runs of each start step as one group; each run's value, in `specs`' order."""
    values: dict[int, float] = {}
    for start in sorted(set(starts)):
        members = [i for i, s in enumerate(starts) if s == start]
        trained = _train([specs[i] for i in members], data, device, launcher, done)
        values.update(zip(members, trained, strict=True))
    return [values[i] for i in range(len(specs))]


def _check_checkpoint_space(
    paths: Sequence[Path | None], run_models: Sequence[nn.Module], plans: Sequence[TrainPlan]
) -> None:
    """Refuse runs whose checkpoints would not fit on the disk (they would fail at the first
    one, losing the training done): a lockstep group of unfrozen models writes one per run."""
    sizes = [
        checkpoint.size_estimate(model, plan.optimizer)
        for path, model, plan in zip(paths, run_models, plans, strict=True)
        if path is not None
    ]
    if not sizes:
        return
    folder = next(p for p in paths if p is not None).parent
    while not folder.exists():
        folder = folder.parent
    need, free = sum(sizes) + max(sizes), shutil.disk_usage(folder).free  # + one file in writing
    if need > free:
        raise UserError(
            f"the checkpoints of {len(sizes)} run(s) need about {need / 2**30:.1f} GiB in "
            f"{folder}, which has {free / 2**30:.1f} GiB free: set checkpoint_every=null (a "
            f"killed run then restarts from scratch) or train fewer runs at once "
            f"(hydra.launcher.max_runs=N)"
        )


def check(cfg: DictConfig) -> None:
    """Everything that can be checked without data, in a second or so, before anything is built:
    root values, the device, the task's keys and types, the model's weights against the variant,
    the adapter against the architecture, the logger's login. Raises a UserError."""
    _validate(cfg)
    _check_device(cfg.device)
    variant = variants.VariantConfig(**_plain(cfg.variant))
    model_cfg = models.ModelConfig(**_plain(cfg.model))
    tokenizer = hub.resolve_path(model_cfg.path) if model_cfg.path else None
    tasks.check(_plain(cfg.task), tokenizer)
    _target(model_cfg._target_, "model._target_")
    model_type = models.check(model_cfg, pretrained=variant.pretrained)
    schemes.check(schemes.SchemeConfig(**_plain(cfg.scheme)), model_type)
    trackers.check_tracker(_plain(cfg.logger))


def _validate(cfg: DictConfig) -> None:
    if not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr} must be > 0 (e.g. lr=1e-4)")
    for key in ("batch_size", "max_steps", "eval_every", "eval_batch_size", "log_every"):
        if not cfg[key] >= 1:
            raise ConfigError(f"{key}={cfg[key]} must be a positive integer")
    for key in ("checkpoint_every", "val_subset"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]} must be >= 1, or null")
    if cfg.max_epochs is not None and not cfg.max_epochs >= 1:
        raise ConfigError(f"max_epochs={cfg.max_epochs} must be >= 1, or null to use max_steps")
    if cfg.patience is not None and cfg.patience < 1:
        raise ConfigError(f"patience={cfg.patience} must be >= 1, or null to never stop early")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ConfigError(f"grad_clip={cfg.grad_clip} must be > 0, or null for no clipping")
    if cfg.get("pruner") is not None:
        pruning.build(_plain(cfg.pruner))  # checks its keys' values
    threads = cfg.threads
    if threads not in ("auto", None) and not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads={threads} must be auto, a positive integer, or null")


def _check_device(name: str) -> None:
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name} is not a device: use auto, cpu or cuda[:<n>]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} but torch sees no CUDA device (torch.cuda.is_available() is False): "
            "use device=auto (CUDA when present) or device=cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s): "
            "use device=cuda or a smaller index"
        )


def _target(path: str, key: str) -> Any:
    try:
        return get_method(path)
    except Exception as err:  # Hydra's locate error: module or attribute missing
        raise ConfigError(f"{key}={path} cannot be imported ({err})") from err


def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def _fit_config(cfg: DictConfig, steps_per_epoch: int) -> FitConfig:
    """The loop's settings; an epoch budget (max_epochs) replaces max_steps when set."""
    max_steps = cfg.max_steps
    if cfg.max_epochs is not None:
        max_steps = max(1, cfg.max_epochs * steps_per_epoch)
    return FitConfig(
        batch_size=cfg.batch_size,
        max_steps=max_steps,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        grad_clip=cfg.grad_clip,
        eval_batch_size=cfg.eval_batch_size,
        val_subset=cfg.val_subset,
        log_every=cfg.log_every,
        seed=cfg.seed,
        progress=cfg.progress,
        checkpoint_every=cfg.checkpoint_every,
    )


def banner(
    specs: Sequence[RunSpec],
    data: tasks.TaskData,
    params: dict[str, int],
    device: torch.device,
    max_steps: int,
) -> str:
    """The one line a run (or a lockstep group) announces itself with: model and variant with the
    trainable parameters, scheme, data sizes, budget, device and precision, LRs and seeds."""
    cfg = specs[0].cfg
    weights = f"pretrained {cfg.model.path}" if cfg.variant.pretrained else "random init"
    trainable = f"{params['trainable']:,} of {params['total']:,} parameters trainable"
    share = f"{100 * params['trainable'] / params['total']:.2f}%"
    scheme = [labels.optimizer_name(schemes.SchemeConfig(**_plain(cfg.scheme)))]
    if cfg.scheme.adapter != "none":
        scheme.append(f"adapter {cfg.scheme.adapter}: {params.get('adapter', 0):,} parameters")
    if cfg.scheme.schedule != "constant":
        scheme.append(f"schedule {cfg.scheme.schedule}")
    val = f"{len(data.val):,} val"
    if cfg.val_subset is not None and cfg.val_subset < len(data.val):
        val += f" ({cfg.val_subset:,} scored per pass)"
    budget = f"{max_steps:,} steps of batch {cfg.batch_size}"
    if cfg.max_epochs is not None:
        budget += f" (max_epochs={cfg.max_epochs})"
    precision = "fp32"
    if isinstance(cast := engine.autocast(device), torch.autocast):
        precision = f"{str(cast.fast_dtype).removeprefix('torch.')} autocast"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precision += ", TF32 matmuls"
    lrs = sorted({float(spec.cfg.lr) for spec in specs})
    seeds = sorted({int(spec.cfg.seed) for spec in specs})
    runs = f"lr {', '.join(f'{lr:g}' for lr in lrs)}; seed {', '.join(map(str, seeds))}"
    if len(specs) > 1:
        runs = f"{len(specs)} runs at once ({runs})"
    return (
        f"model {cfg.model.name} ({weights}), variant {cfg.variant.name}: {trainable} ({share}) | "
        f"scheme {cfg.scheme.name} ({', '.join(scheme)}) | task {data.spec.name}: "
        f"{len(data.train):,} train, {val}, {len(data.test):,} test | {budget} | "
        f"device {device}, {precision} | {runs}"
    )


def _results(
    spec: RunSpec,
    params: dict[str, int],
    result: FitResult,
    device: torch.device,
    wall_seconds: float,
) -> dict[str, Any]:
    return {
        "status": "complete",
        "config": _plain(spec.cfg),
        "choices": dict(spec.choices or {}),
        "params": params,
        **{f"val/{k}": v for k, v in result.best_val.items()},
        **{f"test/{k}": v for k, v in result.test.items()},
        "best_step": result.best_step,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        **({} if result.pruned_at is None else {"pruned": True, "pruned_at": result.pruned_at}),
        "history": result.history,
        "train_seconds": result.train_seconds,
        "val_seconds": result.val_seconds,
        "wall_seconds": wall_seconds,
        "device": str(device),
        "host": platform.node(),
        "pid": os.getpid(),
        "torch": torch.__version__,
    }

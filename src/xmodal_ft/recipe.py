"""One run as a recipe: task → model → variant → scheme → fit → record. DictConfig stops here."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from xmodal_ft import allocator, engine, models, papers, record, schemes, tasks, threads, variants
from xmodal_ft.engine import FitConfig, FitResult

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key to fix."""


def run(
    cfg: DictConfig,
    run_dir: Path | str,
    choices: Mapping[str, Any] | None = None,
    *,
    group: str | None = None,
    name: str | None = None,
) -> float:
    """Train and evaluate one configuration; write results.json; return the validation metric.

    A run whose `run_dir` already holds complete results of the same config is skipped; one with
    a checkpoint continues from it. With `seeds: [..]`, each seed trains in `run_dir/seed_<s>`
    and the mean validation metric is returned (one Optuna trial = the mean over seeds).
    `group` and `name` label the run for trackers (W&B group = the sweep, name = the overrides).
    """
    run_dir = Path(run_dir)
    _validate(cfg)
    if not cfg.get("seeds"):
        return _run_seed(cfg, run_dir, choices, group, name)
    values = []
    for seed in cfg.seeds:
        seed_cfg = cfg.copy()
        with open_dict(seed_cfg):
            seed_cfg.seed, seed_cfg.seeds = seed, None
        seed_name = f"{name},seed={seed}" if name else f"seed={seed}"
        values.append(_run_seed(seed_cfg, run_dir / f"seed_{seed}", choices, group, seed_name))
    mean = sum(values) / len(values)
    log.info("mean validation metric over seeds %s: %.4f", list(cfg.seeds), mean)
    return mean


def _run_seed(
    cfg: DictConfig,
    run_dir: Path,
    choices: Mapping[str, Any] | None,
    group: str | None,
    name: str | None,
) -> float:
    config = _plain(cfg)
    key = record.config_hash(config)
    done = record.read_results(run_dir)
    if done is not None and done.get("config_hash") == key:
        log.info("%s holds complete results of this config: skipped", run_dir)
        return done[f"val/{done['metric']}"]
    started = time.time()
    device = engine.select_device(cfg.device)
    tokenizer = models.resolve_path(cfg.model.path) if cfg.model.path else None
    data = tasks.build(_plain(cfg.task), cache_dir=cfg.cache_dir, tokenizer=tokenizer)
    variant = variants.VariantConfig(**_plain(cfg.variant))
    model = models.build(
        models.ModelConfig(**_plain(cfg.model)),
        data.spec,
        pretrained=variant.pretrained,
        seed=cfg.seed,
    )
    variants.apply(model, variant)
    model.to(device)
    fit_cfg = _fit_config(cfg, steps_per_epoch=len(data.train) // cfg.batch_size)
    if group is not None and not (choices or {}).get("experiment"):  # a sweep without a preset
        papers.warn_if_short(cfg.task.name, fit_cfg.max_steps, cfg.batch_size, len(data.train))
    scheme = schemes.SchemeConfig(**_plain(cfg.scheme))
    plan = schemes.build(model, scheme, lr=cfg.lr, total_steps=fit_cfg.max_steps)
    params = plan.params
    threads.set_threads(cfg.threads, params["total"])
    allocator.keep_freed_memory()
    models.speed_up(model, grad_checkpointing=cfg.grad_checkpointing, compile=cfg.compile)
    log.info(
        "device %s | task %s | model %s | variant %s | scheme %s",
        device,
        data.spec.name,
        cfg.model.name,
        variant.name,
        cfg.scheme.name,
    )
    metric = data.spec.metrics[0]
    tags = [str(cfg[g].name) for g in ("task", "model", "variant", "scheme")]
    meta = {"run_dir": run_dir, "config": config, "group": group, "name": name, "tags": tags}
    tracker = record.build_tracker(_plain(cfg.logger), run_dir, meta)
    checkpoint_path = run_dir / f"checkpoint-{key}.pt" if cfg.checkpoint_every else None
    try:
        result = engine.fit(model, plan, data, fit_cfg, tracker, checkpoint_path)
        payload = _results(cfg, choices, params, result, device, time.time() - started)
        payload.update(config_hash=key, metric=metric)
        tracker.summary(payload)
        record.write_results(run_dir, payload)
    finally:
        tracker.close()
    if checkpoint_path is not None:
        checkpoint_path.unlink(missing_ok=True)
    log.info("test %s = %.4f (results in %s)", metric, result.test[metric], run_dir)
    return result.best_val[metric]


def _validate(cfg: DictConfig) -> None:
    if not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr} must be > 0 (e.g. lr=1e-4)")
    for key in ("batch_size", "max_steps", "eval_every"):
        if not cfg[key] >= 1:
            raise ConfigError(f"{key}={cfg[key]} must be a positive integer")
    if cfg.checkpoint_every is not None and cfg.checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every={cfg.checkpoint_every} must be >= 1, or null")
    if cfg.max_epochs is not None and not cfg.max_epochs >= 1:
        raise ConfigError(f"max_epochs={cfg.max_epochs} must be >= 1, or null to use max_steps")
    if cfg.patience is not None and cfg.patience < 1:
        raise ConfigError(f"patience={cfg.patience} must be >= 1, or null to never stop early")


def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def _fit_config(cfg: DictConfig, steps_per_epoch: int) -> FitConfig:
    """The loop's settings; an epoch budget (max_epochs) replaces max_steps when set."""
    max_steps = cfg.max_steps
    if cfg.max_epochs is not None:
        max_steps = max(1, cfg.max_epochs * steps_per_epoch)
        log.info("max_epochs=%d: %d steps of batch %d", cfg.max_epochs, max_steps, cfg.batch_size)
    return FitConfig(
        batch_size=cfg.batch_size,
        max_steps=max_steps,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        grad_clip=cfg.grad_clip,
        eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
        checkpoint_every=cfg.checkpoint_every,
    )


def _results(
    cfg: DictConfig,
    choices: Mapping[str, Any] | None,
    params: dict[str, int],
    result: FitResult,
    device: torch.device,
    wall_seconds: float,
) -> dict[str, Any]:
    return {
        "status": "complete",
        "config": _plain(cfg),
        "choices": dict(choices or {}),
        "params": params,
        **{f"val/{k}": v for k, v in result.best_val.items()},
        **{f"test/{k}": v for k, v in result.test.items()},
        "best_step": result.best_step,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "history": result.history,
        "train_seconds": result.train_seconds,
        "wall_seconds": wall_seconds,
        "device": str(device),
        "host": platform.node(),
        "pid": os.getpid(),
        "torch": torch.__version__,
    }

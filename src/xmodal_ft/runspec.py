"""A run to train, as a launcher and the recipe see it: its config (one seed), its directory and
its tracker labels. Torch-free, so that grouping and dispatching runs import no torch."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from xmodal_ft.record import identity, results


@dataclass(frozen=True)
class RunSpec:
    """One run: its config (one seed), directory, group choices (results.json records them), and
    its labels for trackers: `sweep` (the sweep dir: W&B's group) and `name` (its overrides)."""

    cfg: DictConfig
    run_dir: Path
    choices: Mapping[str, Any] | None = None
    sweep: str | None = None
    name: str | None = None

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config as plain containers (what results.json records and hashes)."""
        return OmegaConf.to_container(self.cfg, resolve=True)  # type: ignore[return-value]

    @property
    def config_hash(self) -> str:
        return identity.config_hash(self.config)

    @property
    def checkpoint_file(self) -> Path:
        """Where the run keeps its checkpoint (whether it keeps one: `checkpoint_every`)."""
        return identity.checkpoint_file(self.run_dir, self.config)

    def finished(self) -> dict[str, Any] | None:
        """The complete results of this config in the run's directory, or None."""
        return results.complete(self.run_dir, self.config_hash)


def of_config(
    cfg: DictConfig,
    run_dir: Path | str,
    choices: Mapping[str, Any] | None = None,
    *,
    sweep: str | None = None,
    name: str | None = None,
) -> list[RunSpec]:
    """The runs of one configuration: itself, or with `seeds: [..]` one run per seed, each in
    `run_dir/seed_<s>` (one Optuna trial = the mean over its seeds)."""
    run_dir = Path(run_dir)
    if not cfg.get("seeds"):
        return [RunSpec(cfg, run_dir, choices, sweep, name)]
    specs = []
    for seed in cfg.seeds:
        seed_cfg = cfg.copy()
        with open_dict(seed_cfg):
            seed_cfg.seed, seed_cfg.seeds = seed, None
        seed_name = f"{name},seed={seed}" if name else f"seed={seed}"
        specs.append(RunSpec(seed_cfg, run_dir / f"seed_{seed}", choices, sweep, seed_name))
    return specs

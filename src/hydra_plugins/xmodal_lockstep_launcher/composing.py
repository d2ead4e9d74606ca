"""Composing a sweep's jobs once per set of config-group choices (`ComposeOnce`).

Hydra composes each job of a multirun from scratch, about 0.15 s a job, and the sweeper composes
every job once more to check it before the launcher sets it up: 8 s for a 27-job grid of LRs and
seeds, more than a lockstep group of tiny models takes to train. A job whose overrides differ from
an already composed job's only in root scalar values (`lr=`, `seed=`) changes nothing Hydra
composes but those values, the task overrides and the override dirname, so `ComposeOnce` gives it
a copy of that job's config with them set, through OmegaConf's and Hydra's public API as Hydra sets
them (`OmegaConf.update`, the override parser; a test compares every derived config with Hydra's
own composition of the job).

`ComposeOnce` is a `ConfigLoader`: it wraps Hydra's loader and answers everything else from it.
The lockstep launcher puts it in the `HydraContext` that Hydra shares between the sweeper and the
launcher, so the sweeper's check of each job and the launcher's set-up both use it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


class ComposeOnce(ConfigLoader):
    """Hydra's config loader `loader`, composing each sweep job only when no composed job
    differs from it in root scalar values alone (see the module docstring)."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.parser = OverridesParser.create()
        self.composed: list[tuple[DictConfig, list[Override], DictConfig]] = []

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> Any:
        parsed = self.parser.parse_overrides(sweep_overrides)
        for master, done, config in self.composed:
            changed = changed_values(done, parsed, config) if master is master_config else None
            if changed is not None:
                return derived(master, config, changed, parsed)
        config = self.loader.load_sweep_config(master_config, sweep_overrides)
        self.composed.append((master_config, parsed, copy.deepcopy(config)))  # run_job alters it
        return config

    def load_configuration(
        self,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        return self.loader.load_configuration(
            config_name, overrides, run_mode, from_shell, validate_sweep_overrides
        )

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)


def changed_values(
    done: list[Override], parsed: list[Override], config: DictConfig
) -> list[Override] | None:
    """The overrides of `parsed` that differ from `done`'s, when each only sets another scalar
    value of a key that is not a config group (None otherwise: compose the job afresh)."""
    if [o.key_or_group for o in done] != [o.key_or_group for o in parsed]:
        return None
    changed = [new for old, new in zip(done, parsed, strict=True) if old != new]
    groups = config.hydra.runtime.choices
    for override in changed:
        key = override.key_or_group
        current = OmegaConf.select(config, key, default=None, throw_on_missing=False)
        if (
            override.type != OverrideType.CHANGE
            or override.is_hydra_override()
            or override.package is not None
            or key in groups
            or "/" in key
            or isinstance(override.value(), (dict, list))
            or current is None
            or OmegaConf.is_config(current)
        ):
            return None
    return changed


def derived(
    master: DictConfig, config: DictConfig, changed: list[Override], parsed: list[Override]
) -> DictConfig:
    """A copy of the composed `config` with the `changed` root values set as Hydra sets a
    changed value (`OmegaConf.update(..., merge=True)`), and the job's task overrides and
    override dirname those of `parsed`."""
    job = copy.deepcopy(config)
    for override in changed:
        OmegaConf.update(job, override.key_or_group, override.value(), merge=True)
    app = [o for o in parsed if not o.is_hydra_override()]
    hydra = job.hydra
    hydra.overrides.task = [o.input_line for o in app]
    names = hydra.job.config.override_dirname
    hydra.job.override_dirname = override_dirname(
        app, names.exclude_keys, item_sep=names.item_sep, kv_sep=names.kv_sep
    )
    OmegaConf.copy_cache(from_config=master, to_config=job)
    return job


def override_dirname(
    overrides: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str
) -> str:
    """`hydra.job.override_dirname` as Hydra computes it: the overrides as typed, but those of
    `exclude_keys`, sorted, joined by `item_sep`, each `=` replaced by `kv_sep`."""
    lines = sorted(o.input_line for o in overrides if o.key_or_group not in exclude_keys)
    return re.sub("[=]", kv_sep, item_sep.join(lines))

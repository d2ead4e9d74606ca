"""xmodal-ft: cross-modal transfer and fine-tuning experiments with pretrained transformers.

`run` (the recipe) loads on first use and then stores conf/'s schemas in Hydra's ConfigStore
(`config.register()`), so that tools which only read results, such as
`python -m xmodal_ft.report`, start without torch or transformers.
"""

from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from xmodal_ft import record

if TYPE_CHECKING:
    from xmodal_ft.recipe import run

# conf/config.yaml's resolvers (hydra.sweep.subdir, exclude_keys): registered on import, so that
# launcher workers have them (they receive the ConfigStore's schemas from the launching process).
OmegaConf.register_new_resolver("run_key", record.run_key, replace=True)
OmegaConf.register_new_resolver("not_hashed", lambda: sorted(record.NOT_HASHED), replace=True)

__all__ = ["run"]


def __getattr__(name: str) -> Any:
    """`xmodal_ft.run` imports the recipe (torch, transformers) and registers conf/'s schemas
    when first asked for (PEP 562): `from xmodal_ft import run` before composing conf/."""
    if name == "run":
        from xmodal_ft import config
        from xmodal_ft.recipe import run

        config.register()
        globals()["run"] = run  # later lookups find it directly
        return run
    raise AttributeError(f"module 'xmodal_ft' has no attribute {name!r}")

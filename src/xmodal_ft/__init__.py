"""xmodal-ft: cross-modal transfer and fine-tuning experiments with pretrained transformers.

`run` (the recipe) loads on first use and then stores conf/'s schemas in Hydra's ConfigStore
(`config.register()`), so that tools which only read results, such as
`python -m xmodal_ft.report`, start without torch or transformers.
"""

from typing import TYPE_CHECKING, Any

from xmodal_ft.record import identity

if TYPE_CHECKING:
    from xmodal_ft.recipe import run

# conf/config.yaml's resolvers (hydra.sweep.subdir, exclude_keys), registered here and only here:
# on import of the package, because the workers of Hydra's launchers (joblib, submitit) compose
# their job's config after unpickling the task function, which imports this package, and before
# any code of ours runs in them.
identity.register_resolvers()

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

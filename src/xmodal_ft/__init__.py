"""xmodal-ft: cross-modal transfer and fine-tuning experiments with pretrained transformers.

`run` (the recipe) loads on first use, so that tools which only read results, such as
`python -m xmodal_ft.report`, start without torch or transformers.
"""

from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from xmodal_ft.record import run_key

if TYPE_CHECKING:
    from xmodal_ft.recipe import run

# Used by conf/config.yaml (hydra.sweep.subdir); registered on import so launcher workers have it.
OmegaConf.register_new_resolver("run_key", run_key, replace=True)

__all__ = ["run"]


def __getattr__(name: str) -> Any:
    """`xmodal_ft.run` imports the recipe (torch, transformers) when first asked for (PEP 562)."""
    if name == "run":
        from xmodal_ft.recipe import run

        globals()["run"] = run  # later lookups find it directly
        return run
    raise AttributeError(f"module 'xmodal_ft' has no attribute {name!r}")

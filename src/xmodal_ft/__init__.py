"""xmodal-ft: cross-modal transfer and fine-tuning experiments with pretrained transformers."""

from omegaconf import OmegaConf

from xmodal_ft.recipe import run
from xmodal_ft.record import run_key

# Used by conf/config.yaml (hydra.sweep.subdir); registered on import so launcher workers have it.
OmegaConf.register_new_resolver("run_key", run_key, replace=True)

__all__ = ["run"]

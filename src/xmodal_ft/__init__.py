"""xmodal-ft: cross-modal transfer and fine-tuning experiments with pretrained transformers."""

from xmodal_ft import config
from xmodal_ft.recipe import run

# conf/'s schemas and resolvers (run_key, not_hashed); on import, so launcher workers have them.
config.register()

__all__ = ["run"]

"""xmodal-ft: cross-modal transfer and fine-tuning experiments with pretrained transformers."""

from xmodal_ft.recipe import run

__all__ = ["run"]

"""From a configuration to results: `run` (one configuration: train.py) and `train` (runs of one
configuration together: the lockstep launcher), in `entry`; everything checked before data
(`checks`); the group recipe that owns its runs (`group.GroupRecipe`: setup, train, cleanup);
a run's parts from its config (`building`); the line a run announces itself with (`banner`)."""

from xmodal_ft.recipe.checks import ConfigError, check
from xmodal_ft.recipe.entry import run, train

__all__ = ["ConfigError", "check", "run", "train"]

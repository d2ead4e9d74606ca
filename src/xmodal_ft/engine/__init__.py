"""The training loop and what it works on, knowing nothing of Hydra, tasks or variants:

- `plan`: a run's training plan (schemes fill it), the loop's settings, a run's result;
- `run`: one run in training (`Run`: model, plan, random stream, loop state, checkpoint,
  tracker) and its random stream;
- `layout`: how the runs sit in a model (`Single`; lockstep's `Stacked`);
- `loop`: `fit` (one run) and `train` (the runs of a layout, top to bottom);
- `evaluation`, `batches`, `device`: scoring, the runs' batches, device and precision.
"""

from xmodal_ft.engine.device import autocast, select_device
from xmodal_ft.engine.evaluation import evaluate
from xmodal_ft.engine.loop import fit, train
from xmodal_ft.engine.plan import (
    FitConfig,
    FitResult,
    TrainPlan,
    Unfreeze,
    enter_epoch,
    per_example_cross_entropy,
)
from xmodal_ft.engine.run import RandomStream, Run

__all__ = [
    "FitConfig",
    "FitResult",
    "RandomStream",
    "Run",
    "TrainPlan",
    "Unfreeze",
    "autocast",
    "enter_epoch",
    "evaluate",
    "fit",
    "per_example_cross_entropy",
    "select_device",
    "train",
]

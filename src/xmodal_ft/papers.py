"""The two papers' published numbers (copied verbatim into `xmodal_ft/data`), and their budgets.

- `rothermel2021.csv`: Rothermel et al. (2021), test accuracy (%) per task × model × variant.
- `rothermel2021_steps.csv`: the same paper's gradient steps (batch 8, GPT-2) each variant needed
  to match the frozen pretrained variant's best; one column per task.
- `survey_finetuning.csv`: the fine-tuning survey, BERT on SST-2 / CoLA: validation loss and
  accuracy per scheme × adapter × schedule, with the epochs and batch size it trained.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from importlib import resources

log = logging.getLogger(__name__)
ROTHERMEL_BATCH = 8  # Rothermel et al.: Adam, batch 8; their steps table counts steps of it
ROTHERMEL_STEPS_MODEL = "gpt2"  # the steps table is GPT-2's
# The size of each task's test split in the papers (the binomial SE of a number published without
# an error): MNIST, CIFAR-10, CIFAR10-LRA 10,000 images; ListOps 2,000; GLUE dev (SST-2, CoLA).
TEST_EXAMPLES = {"mnist": 10_000, "cifar10": 10_000, "cifar10_lra": 10_000, "listops": 2_000,
                 "sst2": 872, "cola": 1_043}  # fmt: skip
SHORT = 10  # a sweep budget this many times below the papers' warns
_warned = False


def rows(filename: str) -> list[dict[str, str]]:
    """The rows of one shipped CSV file, as strings."""
    text = resources.files("xmodal_ft.data").joinpath(filename).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@dataclass(frozen=True)
class Budget:
    """What a paper trained on a task: examples seen (steps × batch), and how it says so."""

    preset: str  # the preset family reproducing it: experiment=<preset>_<task>
    examples: float
    text: str


def budget(task: str, n_train: int) -> Budget | None:
    """The papers' budget on `task` (None if neither paper ran it); `n_train` sizes an epoch: the
    full training set, not a `task.n_train` subsample (the survey trained epochs of all of it)."""
    steps = [float(r[task]) for r in rows("rothermel2021_steps.csv") if r.get(task)]
    if steps:
        text = (
            f"Rothermel et al.'s GPT-2 variants needed {min(steps):.1e}-{max(steps):.1e} steps "
            f"of batch {ROTHERMEL_BATCH} on {task} to match FPT's best (FPT: to reach it)"
        )
        return Budget("rothermel2021", min(steps) * ROTHERMEL_BATCH, text)
    survey = [r for r in rows("survey_finetuning.csv") if r["task"] == task]
    if survey:
        epochs, batch = int(survey[0]["epochs"]), int(survey[0]["batch_size"])
        text = f"the fine-tuning survey trained {epochs} epochs of batch {batch} on {task}"
        return Budget("survey", float(epochs * n_train), text)
    return None


def warn_if_short(task: str, max_steps: int, batch_size: int, n_train: int) -> bool:
    """Warn (once per process) when a budget is far below the papers'; return whether it did."""
    global _warned
    paper = budget(task, n_train)
    examples = max_steps * batch_size
    if _warned or paper is None or examples * SHORT > paper.examples:
        return False
    _warned = True
    log.warning(
        "budget %d steps of batch %d (%s examples) is %.0fx below the papers': %s. Short "
        "budgets favour high LRs. Use experiment=%s_%s, or raise max_steps (or max_epochs) and "
        "stop early with patience",
        max_steps, batch_size, f"{examples:,}", paper.examples / examples, paper.text,
        paper.preset, task,
    )  # fmt: skip
    return True

"""The papers' published tables as runs, so that `claims` can check each paper's conclusions on
its own numbers (`python -m xmodal_ft.claims --published rothermel2021`).

Rothermel et al. report "the test accuracy and error over 3 runs" without saying which error. Both
readings are checked (`ERRORS`): the error as the SEM over the 3 runs (SD = error·√3), or as their
SD. A number published as mean ± error becomes three seeds mean − d, mean, mean + d, whose SD is d.
The numbers are printed to 0.1, so a published "± 0.0" only says the error is below 0.05: it is
floored at `FLOOR` (0.05 points), half the last printed digit. A number without an error
(Rothermel et al.'s ListOps rows as transcribed, every survey row) becomes one seed, tested on the
task's test set (`papers.TEST_EXAMPLES`). The tables give no LR: `NO_LR` marks that, and the LR
claims are then untested.
"""

from __future__ import annotations

import math
from pathlib import Path

from xmodal_ft import papers
from xmodal_ft.report import scheme_label
from xmodal_ft.report_types import Run

NO_LR = 0.0  # the published tables give each cell's accuracy, not the LR it was chosen at
FLOOR = 0.05  # points: half the last printed digit of a published "± 0.0"
ERRORS = {"sem": "the SEM over the 3 runs", "sd": "the SD over the 3 runs"}  # "error over 3 runs"


def _run(config: dict, seed: int, acc: float) -> Run:
    names = [str(config[g]["name"]) for g in ("task", "model", "variant")]
    return Run(
        path=Path("published", *names, scheme_label(config["scheme"]), f"seed{seed}"),
        group=(*names, scheme_label(config["scheme"])),
        lr=NO_LR,
        seed=seed,
        metric="acc",
        val=acc,
        test=acc,
        best_step=0,
        history=[],
        config={**config, "lr": NO_LR, "seed": seed},
        tests={"acc": acc},
        test_examples=papers.TEST_EXAMPLES[names[0]],
    )


def as_seeds(config: dict, mean: float, err: str, error: str = "sem") -> list[Run]:
    """Runs for a published `mean` (a fraction) ± `err` (points, or "" for none) over 3 runs,
    the error read as `error` (a key of `ERRORS`)."""
    if not err.strip():
        return [_run(config, 0, mean)]
    if error not in ERRORS:
        raise ValueError(f"error read as {error!r}: one of {', '.join(ERRORS)}")
    sd = max(float(err), FLOOR) / 100 * (math.sqrt(3) if error == "sem" else 1.0)
    return [_run(config, seed, mean + k * sd) for seed, k in enumerate((-1, 0, 1))]


def runs(paper: str, error: str = "sem") -> list[Run]:
    """Runs carrying the published numbers of `paper` (rothermel2021 or survey), each error read
    as `error` (sem or sd; the survey publishes none)."""
    found = []
    if paper == "rothermel2021":
        for r in papers.rows("rothermel2021.csv"):
            config = {g: {"name": r[g]} for g in ("task", "model", "variant")}
            config["scheme"] = {"name": "fixed", "optimizer": "adam"}
            found += as_seeds(config, float(r["test_acc"]) / 100, r["err"], error)
    elif paper == "survey":
        for r in papers.rows("survey_finetuning.csv"):
            config = {"task": {"name": r["task"]}, "model": {"name": "bert"},
                      "variant": {"name": "unfrozen_pretrained"}}  # fmt: skip
            config["scheme"] = {"name": r["scheme"], "adapter": r["adapter"],
                                "schedule": r["schedule"], "optimizer": "sgd"}  # fmt: skip
            found += as_seeds(config, float(r["val_acc"]), "", error)
    else:
        raise ValueError(f"no published table for {paper!r}: rothermel2021 or survey")
    return found

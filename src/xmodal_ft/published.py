"""The papers' published tables as runs, so that `claims` can check each paper's conclusions on
its own numbers (`python -m xmodal_ft.claims --published rothermel2021`).

A number published as mean ± err over seeds becomes three seeds (mean - d, mean, mean + d with
d = err·√3, whose SEM is err); a number without an error (Rothermel et al.'s ListOps rows as
transcribed, every survey row) becomes one seed, whose SE is the binomial one on the task's test
set (`papers.TEST_EXAMPLES`). The tables give no LR: `NO_LR` marks that, and the LR claims are
then untested.
"""

from __future__ import annotations

import math
from pathlib import Path

from xmodal_ft import papers
from xmodal_ft.report import scheme_label
from xmodal_ft.report_types import Run

NO_LR = 0.0  # the published tables give each cell's accuracy, not the LR it was chosen at


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


def as_seeds(config: dict, mean: float, err: str) -> list[Run]:
    if not err.strip():
        return [_run(config, 0, mean)]
    d = float(err) / 100 * math.sqrt(3)
    return [_run(config, seed, mean + k * d) for seed, k in enumerate((-1, 0, 1))]


def runs(paper: str) -> list[Run]:
    """Runs carrying the published numbers of `paper` (rothermel2021 or survey)."""
    found = []
    if paper == "rothermel2021":
        for r in papers.rows("rothermel2021.csv"):
            config = {g: {"name": r[g]} for g in ("task", "model", "variant")}
            config["scheme"] = {"name": "fixed", "optimizer": "adam"}
            found += as_seeds(config, float(r["test_acc"]) / 100, r["err"])
    elif paper == "survey":
        for r in papers.rows("survey_finetuning.csv"):
            config = {"task": {"name": r["task"]}, "model": {"name": "bert"},
                      "variant": {"name": "unfrozen_pretrained"}}  # fmt: skip
            config["scheme"] = {"name": r["scheme"], "adapter": r["adapter"],
                                "schedule": r["schedule"], "optimizer": "sgd"}  # fmt: skip
            found += as_seeds(config, float(r["val_acc"]), "")
    else:
        raise ValueError(f"no published table for {paper!r}: rothermel2021 or survey")
    return found

"""The papers' claims, quoted word for word, checked on a sweep or on a paper's own table.

    python -m xmodal_ft.claims multirun/<date>/<time> [more dirs] [--paper rothermel2021|survey]
    python -m xmodal_ft.claims --published rothermel2021|survey [--error sem|sd|both]
    python -m xmodal_ft.claims ... [--alpha 0.05] [--summary]
    python -m xmodal_ft.claims.page docs/reproduction.md [--check]   # the reproduction page

For each claim: the sentence verbatim and where it stands in the paper (`quotes`), our readings
of it and why, and per (task, model) cell a verdict per reading: agree, disagree, or untested
(a part cannot be checked: an LR not in the grid, a row not run, no spread known), beside the
verdict with Holm's adjustment; then the verdict over cells. Each comparison is a one-sided
Welch test at α (`xmodal_ft.significance`); runs are read as the report reads them (the LR chosen
by mean validation metric, the test metric over seeds at it).
"""

from xmodal_ft.claims.cli import CHECKS, ClaimsError, main, text
from xmodal_ft.claims.quotes import CLAIMS, ROTHERMEL, SURVEY, Claim, Quote, Reading
from xmodal_ft.claims.rothermel import rothermel2021
from xmodal_ft.claims.survey import survey
from xmodal_ft.claims.verdicts import OverCells, Part, Verdict, over_cells

__all__ = [
    "CHECKS",
    "CLAIMS",
    "ROTHERMEL",
    "SURVEY",
    "Claim",
    "ClaimsError",
    "OverCells",
    "Part",
    "Quote",
    "Reading",
    "Verdict",
    "main",
    "over_cells",
    "rothermel2021",
    "survey",
    "text",
]

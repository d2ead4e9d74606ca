"""`python -m xmodal_ft.claims`: the papers' claims, quoted, checked on runs or on a paper's own
table (the module docstring of `xmodal_ft.claims` gives the commands)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xmodal_ft import published
from xmodal_ft.claims.quotes import ROTHERMEL, SURVEY
from xmodal_ft.claims.render import render
from xmodal_ft.claims.rothermel import rothermel2021
from xmodal_ft.claims.survey import survey
from xmodal_ft.report import ReportError, aggregate, load_runs
from xmodal_ft.significance import ALPHA

CHECKS = {"rothermel2021": (rothermel2021, ROTHERMEL), "survey": (survey, SURVEY)}


class ClaimsError(ValueError):
    """A check that cannot be made; the message says what to pass instead."""


def parser() -> argparse.ArgumentParser:
    from xmodal_ft import claims

    p = argparse.ArgumentParser(prog="python -m xmodal_ft.claims",
                                description=claims.__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("dirs", nargs="*", type=Path, help="multirun dirs (searched recursively)")
    p.add_argument("--paper", choices=sorted(CHECKS), default="rothermel2021")
    p.add_argument(
        "--published",
        choices=sorted(CHECKS),
        help="check a paper's claims on its own published table instead of runs",
    )
    p.add_argument(
        "--error",
        choices=[*published.ERRORS, "both"],
        default="both",
        help="--published: read the table's error as the SEM or the SD over 3 runs",
    )
    p.add_argument("--alpha", type=float, default=ALPHA, help="significance level (one-sided)")
    p.add_argument(
        "--summary",
        action="store_true",
        help="the claims and a verdict per cell, without the numbers",
    )
    p.add_argument("--no-quotes", dest="quotes", action="store_false",
                   help="name each claim instead of quoting it with its readings")  # fmt: skip
    return p


def text(argv: list[str]) -> str:
    """What the command prints for `argv`; ClaimsError when it cannot check."""
    args = parser().parse_args(argv)
    if bool(args.dirs) == bool(args.published):
        raise ClaimsError("pass multirun dirs, or --published PAPER (not both)")
    if not 0 < args.alpha < 1:
        raise ClaimsError(f"--alpha {args.alpha:g}: pass a level between 0 and 1, e.g. 0.05")
    paper = args.published or args.paper
    check, claims = CHECKS[paper]
    if args.published:
        errors = list(published.ERRORS) if args.error == "both" else [args.error]
        errors = errors if paper == "rothermel2021" else ["sem"]  # the survey gives no error
        named = len(errors) > 1
        variants = [(e.upper() if named else "", check(aggregate(published.runs(paper, e)),
                                                         args.alpha)) for e in errors]  # fmt: skip
        source = f"its own published table ({_errors(paper, errors)})"
    else:
        variants = [("", check(aggregate(load_runs(args.dirs)[0]), args.alpha))]
        source = ", ".join(map(str, args.dirs))
    if not any(vs for _, vs in variants):
        raise ClaimsError(f"no (task, model) in {source} has the {paper} cells")
    return render(paper, source, claims, variants, args.summary, args.quotes)


def _errors(paper: str, errors: list[str]) -> str:
    if paper != "rothermel2021":
        return "no errors published: one seed per row, tested on the test set"
    read = " and as ".join(f"{published.ERRORS[e]} ({e.upper()})" for e in errors)
    return f'"error over 3 runs" read as {read}; a published 0.0 floored at {published.FLOOR:g}'


def main(argv: list[str] | None = None) -> None:
    p = parser()
    try:
        print(text(argv if argv is not None else __import__("sys").argv[1:]), end="\n")
    except (ClaimsError, ReportError) as err:
        p.exit(2, f"claims: error: {err}\n")

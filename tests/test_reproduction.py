"""docs/reproduction.md shows what the tool computes: each claims table on the page is
`python -m xmodal_ft.claims` on the study's results shipped in docs/reproduction/runs, verbatim."""

from __future__ import annotations

import pytest

from conftest import ROOT
from xmodal_ft import claims
from xmodal_ft.report import aggregate, load_runs

DOC = ROOT / "docs" / "reproduction.md"
RUNS = ROOT / "docs" / "reproduction" / "runs"


@pytest.mark.parametrize(
    ("stage", "paper"),
    [("mnist_sweep", "rothermel2021"), ("mnist_converge", "rothermel2021"), ("sst2", "survey")],
)
def test_the_pages_claims_tables_are_the_tools_output_on_the_shipped_runs(stage, paper) -> None:
    table = claims.to_markdown(claims.CHECKS[paper](aggregate(load_runs([RUNS / stage])[0])))
    assert table in DOC.read_text(encoding="utf-8")
    assert f"python -m xmodal_ft.claims docs/reproduction/runs/{stage}" in DOC.read_text()

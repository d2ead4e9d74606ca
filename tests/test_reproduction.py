"""docs/reproduction.md is the tool's output: `python -m xmodal_ft.claims.page` regenerates its
generated sections from the runs shipped in docs/reproduction/runs and the published tables and
finds them unchanged, no section is empty, and every number in the hand-written text is one those
sections print. A changed number, an emptied table or a typed number fails."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from xmodal_ft import claims
from xmodal_ft.claims import page

DOC = ROOT / "docs" / "reproduction.md"
RUNS = ROOT / "docs" / "reproduction" / "runs"
TOOL = "python -m xmodal_ft.claims "


@pytest.fixture
def text(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(ROOT)  # the sections name the runs from the checkout's root
    return DOC.read_text(encoding="utf-8")


def test_the_page_is_its_generated_sections_regenerated_unchanged(text: str) -> None:
    assert page.regenerate(text) == text
    specs = [spec for spec, _ in page.sections(text)]
    for stage in ("mnist_sweep", "mnist_converge", "sst2"):
        assert any(spec.startswith(TOOL + f"docs/reproduction/runs/{stage}") for spec in specs)
        assert f"facts docs/reproduction/runs/{stage}" in specs
    assert {
        TOOL + "--published rothermel2021 --summary",
        TOOL + "--published survey --summary",
    } <= set(specs)


def table_rows(body: str) -> list[str]:
    """The data rows of the Markdown tables in a section (no header, no rule)."""
    lines = body.splitlines()
    return [line for i, line in enumerate(lines) if line.startswith("| ")
            and i + 1 < len(lines) + 1 and not line.startswith("|---")
            and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]  # fmt: skip


def missing_content(spec: str, body: str) -> list[str]:
    """What a section lacks: a verdict row for every reading of every claim it checks (or the
    line saying none could be tested), a data row in each table, three facts."""
    if spec.startswith(TOOL):
        args = shlex.split(spec.removeprefix(TOOL))
        paper = "survey" if "survey" in args else "rothermel2021"
        lacking = []
        for claim in claims.CHECKS[paper][1]:
            part = body.split(f"**({claim.key})**", 1)[-1].split("\n**(", 1)[0]
            if "Untested in every cell" in part:
                continue
            lacking += [f"({claim.key}) {r.key}" for r in claim.readings
                        if not any(f"| {r.key} |" in row for row in table_rows(part))]  # fmt: skip
        return lacking
    if spec.startswith("facts"):
        return [] if body.count("\n- ") >= 2 else ["facts"]
    return [] if table_rows(body) else ["table rows"]


def test_no_section_is_empty_or_lacks_a_claims_verdict(text: str) -> None:
    for spec, body in page.sections(text):
        assert missing_content(spec, body) == [], spec
    emptied = re.sub(r"(\| ours \(minilm, 200 steps\).*\n)", "", text)
    [(spec, body)] = [(s, b) for s, b in page.sections(emptied) if s.startswith("accuracy") and
                      "mnist_sweep" in s]  # fmt: skip
    assert table_rows(body) == ["| paper (gpt2, to convergence) | 98.5 ± 0.1 | 98.0 ± 0.0 | "
                                "99.0 ± 0.0 | 98.7 ± 0.0 |"]  # fmt: skip
    assert page.regenerate(emptied) != emptied  # regenerating restores it
    claims_section = next(
        b
        for s, b in page.sections(text)
        if s == TOOL + "docs/reproduction/runs/mnist_sweep --no-quotes"
    )
    header_only = re.sub(r"\| mnist, minilm \| each .*\n(\|  .*\n)*", "", claims_section)
    assert missing_content(TOOL + "docs/reproduction/runs/mnist_sweep", header_only) == ["(a) each"]


def test_a_changed_number_in_a_section_or_in_the_text_fails(text: str) -> None:
    changed = text.replace("84.1 ± 0.7 (lr 1e-3)", "84.2 ± 0.7 (lr 1e-3)", 1)
    assert changed != text and page.regenerate(changed) != changed
    for typed in ("32.7", "33"):  # 33 stands in the page only as an exponent (p 3.7e-33)
        prose = text.replace("(16.4 and 32.5)", f"(16.4 and {typed})", 1)
        assert prose != text and page.unprinted(prose) == [typed]


def test_every_number_in_the_hand_written_text_is_printed_by_a_section(text: str) -> None:
    found = page.numbers(text)
    assert len(found) > 50  # the check reads the page's prose
    assert {"84.1", "40.9", "3.16e-6", "0.0062", "175", "108"} <= set(found)
    assert page.unprinted(text) == []


def test_numbers_are_read_outside_names_code_and_generated_sections() -> None:
    sample = ("GPT-2 and all-MiniLM-L6-v2 on 2,000 images: 84.1 ± 0.7 at 3.16e-6, p 0.0062.\n"
              "`lr=1e-3` ![x](reproduction/mnist_lr.png)\n```bash\npython train.py lr=5\n```\n"
              "<!-- generated: facts x -->\n- 77 runs\n<!-- end generated -->\n")  # fmt: skip
    assert page.numbers(sample) == ["2,000", "84.1", "0.7", "3.16e-6", "0.0062"]
    assert page.unprinted(sample) == ["2,000", "84.1", "0.7", "3.16e-6", "0.0062"]


def test_the_page_command_rewrites_a_stale_page_and_check_names_it(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    stale = tmp_path / "page.md"
    stale.write_text("Intro.\n\n<!-- generated: facts docs/reproduction/runs/sst2 -->\nold\n"
                     "<!-- end generated -->\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        page.main([str(stale), "--check"])
    assert exit_info.value.code == 1
    page.main([str(stale)])
    assert "- 20 runs: 10 settings" in stale.read_text(encoding="utf-8")
    page.main([str(stale), "--check"])  # fresh now: returns
    stale.write_text("No sections.\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        page.main([str(stale)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("line", [line for line in DOC.read_text(encoding="utf-8").splitlines()
                                  if line.startswith(TOOL)])  # fmt: skip
def test_the_pages_claims_commands_parse(line: str) -> None:
    args = shlex.split(line.split("#")[0].removeprefix(TOOL))
    parsed = claims.cli.parser().parse_args(args)
    assert bool(parsed.dirs) != bool(parsed.published)

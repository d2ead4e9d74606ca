"""Markdown of a check: per claim its sentence, where it stands, our readings and why, then the
verdicts (a row per checked part, plain and Holm-adjusted) or, as a summary, a verdict per cell,
and the verdict over cells with the range of α that keeps it."""

from __future__ import annotations

from collections.abc import Sequence

from xmodal_ft.claims.quotes import PAPERS, Claim
from xmodal_ft.claims.verdicts import LABELS, OverCells, Part, Verdict, alpha_interval, over_cells
from xmodal_ft.significance import ALPHA, fmt_p

Variants = Sequence[
    tuple[str, list[Verdict]]
]  # (label, e.g. how a published error is read; verdicts)
MARKS = {True: "yes", False: "no", None: "—"}
QUANTIFIERS = {"all": "every cell", "most": "most cells"}


def rule_line(alpha: float = ALPHA) -> str:
    """How every comparison is decided."""
    return (
        "Each comparison: Welch's t-test from summary statistics "
        f"(scipy.stats.ttest_ind_from_stats), one-sided, α = {alpha:g}; with one seed, the "
        "two-proportion test on the test set "
        "(weaker: test-set noise only). Numbers: mean ± SE (%), the difference in points and in "
        "SE units, Welch's df, p. Holm: p adjusted over the verdict's tests (their number is the "
        "tests column). The readings are ours, not the paper's."
    )


def render(
    paper: str,
    source: str,
    claims: Sequence[Claim],
    variants: Variants,
    summary: bool = False,
    quotes: bool = True,
) -> str:
    """The whole check: title, the test, each claim (quoted, unless not `quotes`) with its
    verdicts (a row per part, or as a `summary` a verdict per cell), the observations."""
    lines = [f"**{PAPERS[paper]}**, checked on {source}.", "", rule_line(_alpha(variants)), ""]
    for claim in claims:
        lines += claim_header(claim) if quotes else [f"**({claim.key})** {_short(claim)}", ""]
        found = [(label, [v for v in vs if v.claim == claim.key]) for label, vs in variants]
        untested = _untested_everywhere(found)
        if untested:
            lines += [f"Untested in every cell: {untested}.", ""]
            continue
        lines += matrix(found) if summary else table(found)
        lines += over_cells_lines(claim, found)
    observations = [(label, [v for v in vs if v.observation]) for label, vs in variants]
    if any(vs for _, vs in observations) and not summary:
        lines += _observations(observations[0][1])
    return "\n".join(lines)


def _alpha(variants: Variants) -> float:
    return next((v.alpha for _, vs in variants for v in vs), ALPHA)


def claim_header(claim: Claim) -> list[str]:
    """The sentence verbatim, where it stands, related sentences, the readings and why."""
    q = claim.quote
    lines = [f'**({claim.key})** "{q.text}" ({q.section})', ""]
    lines += [f'Also ({a.section}): "{a.text}"' for a in claim.also] + ([""] if claim.also else [])
    lines += [f"Cells: {claim.cells_why}.", "", "Our readings:"]
    lines += [f"- **{r.key}**: {r.tests}. Why: {r.why}." for r in claim.readings]
    return [*lines, ""]


def _short(claim: Claim) -> str:
    """A claim without its sentence: its first words and its readings."""
    words = claim.quote.text.split()
    return f'"{" ".join(words[:8])} ..." (readings: {", ".join(r.key for r in claim.readings)})'


def _untested_everywhere(found: Variants) -> str:
    """The one reason when every verdict is untested for the same reason (else "")."""
    verdicts = [v for _, vs in found for v in vs]
    notes = {p.note for v in verdicts for p in v.parts if not p.clauses}
    untested = all(v.holds() is None and all(not p.clauses for p in v.parts) for v in verdicts)
    return notes.pop() if verdicts and untested and len(notes) == 1 else ""


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def table(found: Variants) -> list[str]:
    """A row per part: cell, reading, (error,) tests, verdict and Holm's, part, holds, numbers."""
    named = len(found) > 1
    head = ["task, model", "reading", *(["error"] if named else []), "tests", "verdict", "Holm",
            "part", "holds", "Holm", "numbers"]  # fmt: skip
    lines = [_row(head), "|---" * len(head) + "|"]
    for v, label in _interleaved(found):
        verdict = [v.where, v.reading, *([label] if named else []), str(len(v.tests)),
                   v.label(), v.label(True)]  # fmt: skip
        for i, part in enumerate(v.parts):
            lead = verdict if i == 0 else [""] * len(verdict)
            holds = [MARKS[v.part_holds(part)], MARKS[v.part_holds(part, True)]]
            lines.append(_row([*lead, part.checks, *holds, numbers(v, part)]))
        if v.mode == "any":
            lines.append(_row([""] * len(verdict) + ["holds at", *_holding(v), ""]))
    return [*lines, ""]


def _holding(v: Verdict) -> list[str]:
    """The parts that hold, plain and with Holm (their keys: LRs), for a verdict of some part."""
    return [", ".join(p.key or p.checks.split(":")[0] for p in v.parts if v.part_holds(p, adjusted))
            or "none" for adjusted in (False, True)]  # fmt: skip


def _interleaved(found: Variants) -> list[tuple[Verdict, str]]:
    """The verdicts by cell, then reading, then variant (a published error's two readings)."""
    rows = [(v, label) for label, vs in found for v in vs]
    keys = {(v.where, v.reading): i for i, (v, _) in reversed(list(enumerate(rows)))}
    return sorted(rows, key=lambda r: keys[r[0].where, r[0].reading])


def numbers(v: Verdict, part: Part) -> str:
    """The part's tests (for a clause of several, the one closest to holding) and its note."""
    shown = []
    for clause in part.clauses:
        check = min(clause, key=lambda c: c.test.p if c.significant else -c.test.p)
        text = check.test.describe(v.p(check.test, True))
        shown.append(f"{check.label}: {text}" if check.label else text)
    return "; ".join([*shown, *([part.note] if part.note else [])])


def matrix(found: Variants) -> list[str]:
    """A verdict per cell (columns) for each reading (and error reading): plain, Holm if other."""
    cells = list(dict.fromkeys(v.where for _, vs in found for v in vs))
    readings = list(dict.fromkeys(v.reading for _, vs in found for v in vs))
    named = len(found) > 1
    head = ["reading", *(["error"] if named else []), *cells]
    lines = [_row(head), "|---" * len(head) + "|"]
    for reading in readings:
        for label, vs in found:
            by_cell = {v.where: v for v in vs if v.reading == reading}
            row = [reading, *([label] if named else [])]
            lines.append(_row(row + [_both(by_cell[c]) if c in by_cell else "" for c in cells]))
    return [*lines, ""]


def _both(v: Verdict | OverCells) -> str:
    plain, adjusted = LABELS[v.holds()], LABELS[v.holds(True)]
    return plain if plain == adjusted else f"{plain} (Holm: {adjusted})"


def over_cells_lines(claim: Claim, found: Variants) -> list[str]:
    """Per reading (and error reading): the verdict over cells, counts, and the α range."""
    lines = []
    for label, vs in found:
        for oc in over_cells(vs, {claim.key: claim.cells}):
            agree, tested = oc.count()
            where = f"{oc.reading}{f', error as {label}' if label else ''}"
            head = f"- Over cells ({QUANTIFIERS[claim.cells]}), {where}: **{_both(oc)}**"
            if not tested:
                lines.append(f"{head}: no cell could be tested.")
                continue
            text = f"{head}: {agree} of {tested} tested cells agree (Holm: {oc.count(True)[0]})"
            if _ps(oc):
                lo, hi = alpha_interval(lambda a, oc=oc: oc.at(a).holds(), _ps(oc))
                text += f"; the plain verdict stays for any α in ({fmt_p(lo)}, {fmt_p(hi)}]"
            lines.append(text + ".")
    return [*lines, ""]


def _ps(oc: OverCells) -> list[float]:
    return [t.p for v in oc.verdicts for t in v.tests]


def _observations(verdicts: list[Verdict]) -> list[str]:
    """The tool's own comparisons, with two-sided p and no verdict."""
    effects = {"adapter": "the Houlsby adapter against none",
               "schedule": "the slanted-triangular schedule against constant"}  # fmt: skip
    lines = [
        "**The tool's observations** (not the paper's claims; no verdict; two-sided p):",
        "",
        _row(["task, model", "effect", "rows", "numbers"]),
        "|---" * 4 + "|",
    ]
    for v in verdicts:
        for i, part in enumerate(v.parts):
            lead = [v.where, effects[v.reading]] if i == 0 else ["", ""]
            test = part.tests[0]
            lines.append(_row([*lead, part.checks, test.describe(two_sided=True)]))
    return [*lines, ""]

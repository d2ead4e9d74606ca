"""The reproduction page's generated sections, from the shipped runs and the published tables:

    python -m xmodal_ft.claims.page docs/reproduction.md           # rewrite them (from the root)
    python -m xmodal_ft.claims.page docs/reproduction.md --check   # exit 1 if one is stale

A section stands between `<!-- generated: SPEC -->` and `<!-- end generated -->`. SPEC is a
command of the tool (`python -m xmodal_ft.claims ARGS`: the section is its output) or one of
`SECTIONS` with a runs dir (paths relative to the working directory: run it from the checkout's
root). Everything else on the page is hand-written, and every number in it must be one the
generated sections print: both commands refuse a page with another (tests/test_reproduction.py).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from xmodal_ft.atomic import atomic_path
from xmodal_ft.claims import cli, page_sections

CLAIMS = "python -m xmodal_ft.claims"
SECTIONS: dict[str, Callable[[str], str]] = {
    "accuracy": page_sections.accuracy,
    "per-lr": page_sections.per_lr,
    "survey-table": page_sections.survey_table,
    "facts": page_sections.facts,
}
MARKED = re.compile(r"(<!-- generated: (?P<spec>.+?) -->\n)(?P<body>.*?)(<!-- end generated -->)",
                    re.S)  # fmt: skip


# A number in the text: 2,000 / 84.1 / 3.16e-6; not a digit inside a name (GPT-2, L6, mnist_lr).
NUMBER = re.compile(
    r"(?<![\w.\-/])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w/])"
)
NOT_PROSE = re.compile(r"<!-- generated: .+? -->\n.*?<!-- end generated -->|```.*?```|`[^`\n]*`"
                       r"|<!--.*?-->|\]\([^)]*\)", re.S)  # fmt: skip


class PageError(ValueError):
    """A section that cannot be generated; the message names it."""


def generate(spec: str) -> str:
    """The text of one section: the tool's output for a claims command, else a `SECTIONS` one."""
    if spec.startswith(CLAIMS + " "):
        return cli.text(shlex.split(spec.removeprefix(CLAIMS + " "))) + "\n"
    kind, *args = shlex.split(spec)
    if kind not in SECTIONS or len(args) != 1:
        raise PageError(f"unknown section {spec!r}: `{CLAIMS} ARGS` or one of "
                        f"{', '.join(SECTIONS)} with a runs dir")  # fmt: skip
    return SECTIONS[kind](args[0])


def sections(text: str) -> list[tuple[str, str]]:
    """(spec, body) of every generated section of a page."""
    return [(m["spec"], m["body"]) for m in MARKED.finditer(text)]


def regenerate(text: str) -> str:
    """The page with every generated section rewritten; a page without any is refused."""
    if not MARKED.search(text):
        raise PageError("no <!-- generated: ... --> sections on the page")
    return MARKED.sub(lambda m: m[1] + _body(m["spec"]) + m[4], text)


def _body(spec: str) -> str:
    try:
        body = generate(spec)
    except (cli.ClaimsError, ValueError) as err:
        raise PageError(f"section {spec!r}: {err}") from err
    if not body.strip():
        raise PageError(f"section {spec!r} generated nothing")
    return body


def unprinted(text: str) -> list[str]:
    """The numbers of the page's hand-written text (outside generated sections, code and link
    targets) that no generated section prints."""
    printed = " ".join(body for _, body in sections(text))
    return [n for n in numbers(text) if not re.search(_printed_as(n), printed)]


def _printed_as(number: str) -> str:
    """`number` as a whole number in the output: not inside another, nor an exponent."""
    return rf"(?<![\w.])(?<!e-){re.escape(number)}(?!\w|\.\d)"


def numbers(text: str) -> list[str]:
    """The numbers of the page's hand-written text."""
    return NUMBER.findall(NOT_PROSE.sub(" ", text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xmodal_ft.claims.page",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("page", type=Path, help="the page, e.g. docs/reproduction.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if a section is stale")
    args = parser.parse_args(argv)
    try:
        text = args.page.read_text(encoding="utf-8")
        new = regenerate(text)
    except (OSError, PageError) as err:
        parser.exit(2, f"claims.page: error: {err}\n")
    missing = unprinted(new)
    if missing:
        parser.exit(1, "numbers in the hand-written text that no section prints: "
                    + ", ".join(missing) + "\n")  # fmt: skip
    if args.check:
        pairs = zip(sections(text), sections(new), strict=True)
        stale = [spec for (spec, body), (_, fresh) in pairs if body != fresh]
        if stale:
            parser.exit(1, "stale sections (regenerate the page): " + "; ".join(stale) + "\n")
        return
    if new != text:
        with atomic_path(args.page) as tmp:
            Path(tmp).write_text(new, encoding="utf-8")
    print(f"{args.page}: {len(sections(new))} sections generated", file=sys.stderr)


if __name__ == "__main__":
    main()

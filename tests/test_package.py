"""The package's shape: small modules with one job, short functions, no hidden state."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [*(ROOT / "src" / "xmodal_ft").rglob("*.py"), *(ROOT / "src").glob("hydra_*/**/*.py")]
)
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 100


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT / "src")))
def test_modules_and_functions_stay_short(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    count = len(text.splitlines())
    assert count <= MAX_MODULE_LINES, f"{count} lines: split the module along its jobs"
    for fn in functions(ast.parse(text)):
        lines = fn.end_lineno - fn.lineno + 1
        assert lines <= MAX_FUNCTION_LINES, f"{fn.name}: {lines} lines"


def test_no_context_variables_carry_state() -> None:
    """State goes by argument (the stack to attention by keyword, runs to launchers by value)."""
    assert not [p for p in SOURCES if "ContextVar" in p.read_text(encoding="utf-8")]

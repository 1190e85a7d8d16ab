"""Size limits of the package: modules up to 500 lines, functions up to 80 (docs/architecture.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "adapmtl_cli"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_limit() -> None:
    long = [
        f"{p.relative_to(PACKAGE)}: {n}"
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_no_function_is_over_the_limit() -> None:
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split into named steps): {long}"


def test_every_module_says_its_job_in_its_first_line() -> None:
    missing = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert not missing, f"modules without a docstring naming their job: {missing}"


def test_the_top_level_holds_only_the_ground_and_the_api() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "config.py", "errors.py"]
    assert sorted(p.name for p in (PACKAGE / "api").glob("*.py")) == ["__init__.py", "pruning.py"]

"""How dataset readers report bad files: paths quoted alike, and the problems found pooled into one ``DataError``."""

from __future__ import annotations

from pathlib import Path

from adapmtl_cli.errors import DataError

MAX_PROBLEMS = 5
"""At most this many problems are spelled out in one error; the rest are counted."""


def quoted(path: Path | str) -> str:
    """``path`` as it appears in error messages: the string in quotes."""
    return repr(str(path))


def raise_problems(problems: list[str]) -> None:
    """Raise one ``DataError`` listing the first few problems, if there are any."""
    if problems:
        more = len(problems) - MAX_PROBLEMS
        shown = problems[:MAX_PROBLEMS] + ([f"and {more} more"] if more > 0 else [])
        raise DataError("; ".join(shown))

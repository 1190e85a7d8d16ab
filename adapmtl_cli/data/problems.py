"""How dataset readers report bad files: paths quoted alike, and the problems found pooled into one ``DataError``."""

from __future__ import annotations

import os
import stat
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


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def require_regular_file(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file (a symlink to one is fine), before anything opens it.

    Opening a FIFO for reading blocks until a writer comes, forever in practice, and a device never ends; so
    every reader checks with ``stat`` (which never blocks) first. A path that cannot be examined (missing,
    no permission) passes: the reader's own open reports it, in the reader's words.

    Raises:
        DataError: ``path`` is a folder, FIFO, socket or device.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a plain file")
        raise DataError(f"{quoted(path)} is {kind}, not a regular file; dataset files must be plain files")

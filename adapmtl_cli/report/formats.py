"""The report formats and layer orders ``adapmtl report`` offers, and which one a command line asks for.

Kept apart from ``views`` (which reads runs, and so loads torch) so that ``report`` checks its options before
any heavy import.
"""

from __future__ import annotations

from pathlib import Path

from adapmtl_cli.errors import ConfigError

FORMATS = ("table", "json", "markdown", "csv", "html")
SORTS = ("model", "sparsity", "params", "name")
SUFFIX_FORMATS = {".json": "json", ".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".html": "html"}


def resolve_format(
    fmt: str | None, *, as_json: bool = False, markdown: bool = False, output: Path | None = None, sort: str = "model"
) -> str:
    """The format asked for: ``--format``, a short flag, else ``--output``'s suffix, else ``table``.

    Raises:
        ConfigError: an unknown format or sort key, or flags that contradict each other (all named at once).
    """
    asked = {name for name, on in (("json", as_json), ("markdown", markdown)) if on}
    problems = []
    if fmt is not None and fmt not in FORMATS:
        problems.append(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt is not None:
        asked.add(fmt)
    if len(asked) > 1:
        problems.append(f"pick one format, got {', '.join(sorted(asked))}")
    if sort not in SORTS:
        problems.append(f"--sort {sort!r} is not one of {', '.join(SORTS)}")
    if problems:
        raise ConfigError("; ".join(problems))
    if asked:
        return asked.pop()
    if output is not None:
        return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "table")
    return "table"

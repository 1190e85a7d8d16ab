"""Write ``docs/cli.md``, the command-line reference, from the Typer app itself.

``python -m adapmtl_cli.cli.docs docs/cli.md`` regenerates it; ``--check`` exits 1 when the file is stale (a
test does the same). The output depends only on the app's commands, options and help texts, never on the
terminal, so it is byte-stable across machines.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

HEADER = """\
# Command-line reference

<!-- Generated from the Typer app by `python -m adapmtl_cli.cli.docs docs/cli.md`; do not edit by hand.
     tests/cli/test_cli_docs.py fails when this file is stale. -->

Every command prints `Error: ...` on one line and exits with 2 for input you can fix, 130 when interrupted
(state saved), 1 for a bug (traceback kept). `adapmtl --debug COMMAND` shows the traceback for every error.
"""

_TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH", bool: ""}


def _metavar(param: Any) -> str:
    """``TEXT``, ``PATH``, ... from the annotation (``X | None`` and ``list[X]`` unwrapped)."""
    ann = param.type_descriptor.annotation
    while True:
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if isinstance(ann, types.UnionType) or typing.get_origin(ann) in (typing.Union, list):
            ann = args[0]
            continue
        return _TYPE_NAMES.get(ann, getattr(ann, "__name__", "VALUE").upper())


def _repeatable(param: Any) -> bool:
    ann = param.type_descriptor.annotation
    return "list[" in str(ann)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(param: Any) -> str:
    if param.required:
        return "required"
    value = param.default
    if value is None or value is False or value == [] or (getattr(param, "is_flag", False) and value is not True):
        return ""
    return f"`{value}`"


def _arg_name(param: Any) -> str:
    return str(param.metavar or param.name).upper()


def _usage(path: str, command: Any) -> str:
    pieces = [path]
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    if options:
        pieces.append("[OPTIONS]")
    for p in command.params:
        if p.param_type_name != "argument":
            continue
        name = _arg_name(p) + ("..." if p.nargs == -1 else "")
        pieces.append(name if p.required else f"[{name}]")
    return " ".join(pieces)


def _params_table(command: Any) -> list[str]:
    rows = []
    for p in command.params:
        if getattr(p, "hidden", False):
            continue
        if p.param_type_name == "argument":
            name = f"`{_arg_name(p)}`"
        else:
            flags = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            meta = "" if getattr(p, "is_flag", False) else _metavar(p)
            name = flags + (f" {meta}" if meta else "")
        more = " (repeatable)" if _repeatable(p) and p.param_type_name == "option" else ""
        rows.append(f"| {name} | {_default(p)} | {_cell(p.help or '')}{more} |")
    if not rows:
        return []
    return ["| argument / option | default | description |", "|---|---|---|", *rows, ""]


def _command_doc(path: str, command: Any, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    lines += ["```", _usage(path, command), "```", ""]
    lines += _params_table(command)
    if command.epilog:
        lines += [_cell(command.epilog), ""]
    return lines


def cli_markdown() -> str:
    """The reference of every command of ``adapmtl`` as Markdown."""
    import typer.main

    from adapmtl_cli.cli.app import app

    root = typer.main.get_command(app)
    lines = [HEADER, "## `adapmtl`", "", (root.help or "").strip(), "", "```", "adapmtl [OPTIONS] COMMAND", "```", ""]
    lines += _params_table(root)

    def walk(group: Any, prefix: str, level: int) -> None:
        for name, command in group.commands.items():
            if getattr(command, "hidden", False):
                continue
            path = f"{prefix} {name}"
            if hasattr(command, "commands"):
                lines.extend([f"{'#' * level} `{path}`", "", (command.help or "").strip(), ""])
                walk(command, path, level + 1)
            else:
                lines.extend(_command_doc(path, command, level))

    walk(root, "adapmtl", 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """``cli_docs [--check] [PATH]``: write PATH (default docs/cli.md), or check that it is current."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0] if paths else "docs/cli.md")
    text = cli_markdown()
    if check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is stale; regenerate it with: python -m adapmtl_cli.cli.docs {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

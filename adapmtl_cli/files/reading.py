"""Checked readers: every file the package reads is parsed here, and every fault is one error naming the file.

One reader per kind of file: text (:func:`read_text`), JSON (:func:`read_json`, :func:`read_json_object`,
:func:`parse_json` for JSON held in another file, such as a safetensors header's metadata), JSON lines
(:func:`read_jsonl`), pydantic file models (:func:`read_model`) and safetensors (:func:`read_safetensors`).
Each takes the error class of the stage that reads (``ConfigError`` for run files, ``DataError`` for datasets,
``ExportError`` for export files, ...) and turns a missing file, an unreadable one, bytes that are not UTF-8,
JSON that does not parse, JSON nested deeper than :data:`MAX_JSON_DEPTH` and a value of the wrong kind into that
error, on one line, with the file's path. Nothing here raises anything else for a bad file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from adapmtl_cli.errors import AdapmtlError, ConfigError

if TYPE_CHECKING:
    from torch import Tensor

MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects a JSON file may have; no file we write goes past 6."""

ErrorClass = type[AdapmtlError]
RUN_FILE_HINT = "is this a run folder written by `adapmtl prune`?"


def named(what: str, path: Path) -> str:
    """``what 'path'`` (just ``'path'`` when ``what`` is empty), as messages name a file."""
    return f"{what} {str(path)!r}" if what else repr(str(path))


def check_regular_file(path: Path, error: ErrorClass, what: str, hint: str) -> None:
    """Refuse a missing or non-regular ``path`` (a folder, a FIFO) before anything opens it."""
    if not path.exists():
        raise error(f"{named(what, path)} does not exist; {hint}")
    if not path.is_file():
        raise error(f"{named(what, path)} is not a regular file; {hint}")


def read_bytes(path: Path, error: ErrorClass, what: str, hint: str = "check the path") -> bytes:
    """The bytes of ``path``; a missing, non-regular or unreadable file is ``error``."""
    path = Path(path)
    check_regular_file(path, error, what, hint)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"{named(what, path)} cannot be read ({exc.strerror or exc}); {hint}") from None


def decode_text(data: bytes, error: ErrorClass, where: str, hint: str) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark is dropped); other bytes are ``error``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); {hint}") from None


def read_text(path: Path, error: ErrorClass, what: str, hint: str = "check the path") -> str:
    """The UTF-8 text of ``path``; a missing or unreadable file, or bytes that are not UTF-8, are ``error``."""
    return decode_text(read_bytes(path, error, what, hint), error, named(what, path), hint)


def _too_deep(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels in ``value`` (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(text: str, error: ErrorClass, where: str, hint: str) -> Any:
    """Parse ``text``; invalid JSON, or JSON nested deeper than :data:`MAX_JSON_DEPTH`, is ``error``.

    Args:
        where: names the text in the message (``"dataset index 'root/x.json'"``).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); {hint}") from None
    except RecursionError:
        value = None
        deep = True
    except ValueError as exc:  # numbers too long to convert, and the like
        raise error(f"{where} is not valid JSON ({' '.join(str(exc).split())[:200]}); {hint}") from None
    else:
        deep = _too_deep(value, MAX_JSON_DEPTH)
    if deep:
        raise error(f"{where} nests arrays or objects more than {MAX_JSON_DEPTH} levels deep; {hint}")
    return value


def read_json(path: Path, error: ErrorClass, what: str, hint: str = "check the path") -> Any:
    """The JSON value in ``path``; every fault (see the module docstring) is ``error`` naming the file."""
    return parse_json(read_text(path, error, what, hint), error, named(what, path), hint)


def json_kind(value: Any) -> str:
    """How JSON names the type of ``value`` (``object``, ``array``, ``string``, ...)."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def read_json_object(path: Path, error: ErrorClass, what: str, hint: str = "check the path") -> dict[str, Any]:
    """The JSON object in ``path``; anything else (an array, a number, ...) is ``error`` too."""
    value = read_json(path, error, what, hint)
    if not isinstance(value, dict):
        raise error(f"{named(what, path)} holds a JSON {json_kind(value)}, expected an object; {hint}")
    return value


def read_jsonl(
    path: Path, error: ErrorClass = ConfigError, what: str = "log", hint: str = RUN_FILE_HINT
) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, one object per line; a missing file has none.

    A line that does not parse ends the log (a crash can cut only the last line, see ``append_jsonl``). A line
    that parses to something other than an object, or nests too deep, is ``error`` naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = read_text(path, error, what, hint).splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            break
        except (RecursionError, ValueError):
            value = None
        if not isinstance(value, dict) or _too_deep(value, MAX_JSON_DEPTH):
            raise error(f"line {number} of {named(what, path)} is not a JSON object of one record; {hint}")
        records.append(value)
    return records


def read_model(path: Path, cls: type[BaseModel], error: ErrorClass = ConfigError, what: str | None = None) -> Any:
    """Read a JSON file into the pydantic model ``cls``; every fault is one ``error`` line naming the file.

    A file of a newer ``schema_version`` than this build reads is named as such (``config.py`` checks it).
    """
    path = Path(path)
    text = read_text(path, error, what or "", RUN_FILE_HINT)
    try:
        return cls.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        if first["loc"] and first["loc"][-1] == "schema_version" and first["type"] == "value_error":
            reason = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
            raise error(f"{named(what or '', path)}: {reason}") from None
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        raise error(
            f"{named(what or '', path)} is not a valid {cls.__name__} ({detail}); was it edited by hand?"
        ) from None


def read_safetensors(path: Path, error: ErrorClass, what: str, hint: str) -> dict[str, Tensor]:
    """Every tensor of a safetensors file; a missing, truncated or malformed file is ``error`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    check_regular_file(path, error, what, hint)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise error(f"{named(what, path)} is not a readable safetensors file ({detail}); {hint}") from None

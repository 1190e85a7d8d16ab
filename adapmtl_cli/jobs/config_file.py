"""``prune --config FILE``: read a TOML config, put the command line over it, validate, and write TOML back.

A config file holds the same keys as the ``prune`` options, snake_case and flat (``batch_size = 4``); a nested
model field (a method's own options) is a ``[table]``. Precedence: options typed on the command line, then the
file, then the defaults of ``PruneConfig`` (the only place defaults live). Session keys (``resume``,
``overwrite``, ``quiet``, ``log_format``, ``tensorboard``) steer one invocation and are not part of the run:
the file may set them, but ``--print-config`` and ``RUN/config.toml`` hold only the run's ``PruneConfig``, so
``adapmtl prune --config RUN/config.toml --out NEW`` repeats a run. Relative paths are relative to the working
directory, as on the command line.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from adapmtl_cli.config import PruneConfig
from adapmtl_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    # mypy checks as 3.10 (pyproject) but tomli is installed only on 3.10 itself, so it may be missing or not.
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

CONFIG_TOML = "config.toml"


class SessionOptions(BaseModel):
    """How one ``prune`` invocation runs; not part of the run's config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    log_format: Literal["text", "jsonl"] = "text"
    tensorboard: str | None = None


SESSION_KEYS = tuple(SessionOptions.model_fields)
SESSION_DEFAULTS = SessionOptions()
"""The session defaults (``SESSION_DEFAULTS.log_format`` etc.), as ``prune``'s options show them."""


def read_config_file(path: Path) -> dict[str, Any]:
    """The key/value pairs of a TOML file; a missing or malformed file is a one-line ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--config {str(path)!r} does not exist; pass a TOML file (see `adapmtl prune --print-config`)"
        )
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {str(path)!r} is not valid TOML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {str(path)!r} is not UTF-8 text; pass a TOML file") from None
    except RecursionError:
        raise ConfigError(f"--config {str(path)!r} nests arrays or tables too deep; pass a plain TOML file") from None


def resolve_prune_config(
    given: Mapping[str, Any], file: Path | None = None, fallback: Mapping[str, Any] | None = None
) -> tuple[PruneConfig, SessionOptions]:
    """Validate the command line (``given``: only what was typed) over the config file's values.

    ``fallback`` fills keys neither sets (``inspect`` needs no ``out``). Every problem (unknown keys, wrong
    types, values out of range, missing required values) is named in one ``ConfigError`` line, before any
    work starts.
    """
    from_file = {**(fallback or {}), **(read_config_file(file) if file is not None else {})}
    known = set(PruneConfig.model_fields) | set(SESSION_KEYS)
    problems = []
    unknown = [k for k in from_file if k not in known]
    if unknown:
        hints = [_hint(k, known) for k in unknown]
        problems.append(
            f"{str(file)!r} has unknown keys " + ", ".join(f"{k!r}{h}" for k, h in zip(unknown, hints, strict=True))
        )
    merged = {k: v for k, v in from_file.items() if k in known}
    merged.update({k: v for k, v in given.items() if v is not None})
    origin = {k: ("config file" if k in from_file and k not in given else "command line") for k in merged}
    run_values = {k: v for k, v in merged.items() if k not in SESSION_KEYS}
    session_values = {k: v for k, v in merged.items() if k in SESSION_KEYS}
    cfg = session = None
    try:
        cfg = PruneConfig(**run_values)
    except ValidationError as exc:
        problems.extend(_messages(exc, origin, file))
    try:
        session = SessionOptions(**session_values)
    except ValidationError as exc:
        problems.extend(_messages(exc, origin, file))
    if problems:
        raise ConfigError("; ".join(problems))
    assert cfg is not None and session is not None
    return cfg, session


def _hint(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _messages(exc: ValidationError, origin: Mapping[str, str], file: Path | None) -> list[str]:
    out = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        flag = f"--{key.replace('_', '-')}" if key else "config"
        where = f" (from {str(file)!r})" if file is not None and origin.get(key) == "config file" else ""
        if err["type"] == "missing":
            out.append(f"{flag}: required (give it on the command line or as `{key} = ...` in --config)")
        else:
            out.append(f"{flag}{where}: {err['msg']} (got {err.get('input')!r})")
    return out


# --- writing ------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, except that TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else _toml_value(key)


def _toml_lines(values: Mapping[str, Any], prefix: str) -> list[str]:
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif value is None:
            lines.append(f"# {_toml_key(key)} is unset (default)")
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, table in tables:
        name = f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)
        lines += ["", f"[{name}]", *_toml_lines(table, name)]
    return lines


def to_toml(values: BaseModel | Mapping[str, Any], header: str = "") -> str:
    """A config (or any JSON-like mapping) as TOML: scalars and lists first, nested mappings as tables."""
    data = values.model_dump(mode="json") if isinstance(values, BaseModel) else dict(values)
    head = [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join([*head, *_toml_lines(data, "")]) + "\n"


RUN_RECORDS = ("typed_paths", "checkpoint_identity")
"""Keys a run records about its inputs (``jobs/run_inputs.py``), not options; left out of the TOML while unset."""


def prune_config_toml(cfg: PruneConfig) -> str:
    """What ``--print-config`` prints and ``RUN/config.toml`` holds."""
    values = cfg.model_dump(mode="json")
    for key in RUN_RECORDS:
        if not values[key]:
            del values[key]
    return to_toml(
        values,
        header="adapmtl prune config; repeat the run with: adapmtl prune --config THIS_FILE --out NEW_RUN\n"
        "Command-line options override these keys.",
    )


def sync_run_config_toml(run: Path) -> Path | None:
    """Write ``RUN/config.toml`` from the run's ``config.json`` (the config the run really used).

    Mirroring the JSON file keeps both right in every case: a fresh run, ``--resume`` (the stored config
    wins), ``--overwrite``, and a refused start that left an earlier run untouched. No valid ``config.json``, no
    TOML file.
    """
    from adapmtl_cli.errors import AdapmtlError
    from adapmtl_cli.files.atomic import read_model, write_text
    from adapmtl_cli.files.rundir import RunDir

    rd = RunDir(run)
    if not rd.config.is_file():
        return None
    try:
        cfg = read_model(rd.config, PruneConfig)
    except AdapmtlError:
        return None
    path = rd.root / CONFIG_TOML
    text = prune_config_toml(cfg)
    if not path.is_file() or path.read_bytes() != text.encode("utf-8"):  # bytes: a damaged file is replaced
        write_text(path, text)
    return path

"""Run-folder layout and atomic writes (temp file, fsync, rename): a crash never leaves half a file.

```
RUN/
  config.json        resolved PruneConfig
  components.json    ComponentsManifest (discovery)
  dense_metrics.json dense model on the validation split (computed once, reused on --resume)
  metrics.jsonl      one line per logged step
  state/latest.pt    resume state (model + thresholds, optimizer, weighting, RNG, step); previous kept as prev.pt;
                     each with a ``.sha256`` sidecar (see ``statefiles.py``)
  pruned.safetensors baked weights (exact zeros), keys as in the user's state_dict
  report.json        RunReport
  export/            written by `adapmtl export`
```
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from adapmtl_cli.errors import ConfigError


class RunDir:
    """Paths of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    components = property(lambda self: self.root / "components.json")
    dense_metrics = property(lambda self: self.root / "dense_metrics.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    state_dir = property(lambda self: self.root / "state")
    state = property(lambda self: self.root / "state" / "latest.pt")
    prev_state = property(lambda self: self.root / "state" / "prev.pt")
    weights = property(lambda self: self.root / "pruned.safetensors")
    report = property(lambda self: self.root / "report.json")
    export_dir = property(lambda self: self.root / "export")

    def is_run(self) -> bool:
        return self.config.is_file()


def sidecar(path: Path) -> Path:
    """The checksum file of ``path``: ``NAME.sha256``, in ``sha256sum`` format."""
    return Path(path).with_name(Path(path).name + ".sha256")


def write_error(path: Path, exc: OSError) -> ConfigError:
    """A one-line ``ConfigError`` for a file or folder that cannot be written (read-only, full disk, ...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ConfigError(
        f"cannot write {str(path)!r}: {reason}; check that the folder is writable and the disk has space, "
        "or pass another --out"
    )


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_temp(path: Path) -> tuple[int, Path]:
    """An open, new, empty ``.NAME.RANDOM.tmp`` next to ``path`` (parents created).

    Unlike ``mkstemp`` (always 0600) the file gets the usual permissions under the umask, like a plain write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then move ``tmp`` over ``path``; ``path`` is either old or complete, never partial.

    Raises:
        ConfigError: the folder cannot be created or written (read-only, full disk, file size limit).
    """
    path = Path(path)
    try:
        fd, tmp = create_temp(path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    os.close(fd)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically.

    For callers that serialise in memory first because their library would report a full disk as its own
    exception type (``safetensors``, ``torch.save``) instead of the ``OSError`` that ``atomic_write`` names.
    """
    atomic_write(path, lambda p: p.write_bytes(data))


def remove_stale_temps(run: RunDir) -> list[Path]:
    """Delete the temporary files a killed process left behind (``.NAME.*.tmp``); return them."""
    stale = []
    for folder in (run.root, run.state_dir):
        if folder.is_dir():
            stale += [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_model(path: Path, model: BaseModel) -> None:
    write_text(path, model.model_dump_json(indent=2) + "\n")


def read_model(path: Path, cls: type[BaseModel]) -> Any:
    """Read a JSON file into ``cls``; a missing or invalid file is a one-line ``ConfigError``."""
    if not Path(path).is_file():
        raise ConfigError(f"{str(path)!r} does not exist; is this a run folder written by `adapmtl prune`?")
    try:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        raise ConfigError(f"{str(path)!r} is not a valid {cls.__name__} ({detail}); was it edited by hand?") from None


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: torch.save(obj, p))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line; a crash can cut only the last line, which ``read_jsonl`` then ignores."""
    try:
        with Path(path).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    except OSError as exc:
        raise write_error(path, exc) from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the log
    return out


def prepare_run_dir(root: Path, *, resume: bool, overwrite: bool) -> RunDir:
    """Check that ``root`` may be written: new, or an earlier run we resume or overwrite."""
    run = RunDir(root)
    try:
        return _prepare_run_dir(run, resume=resume, overwrite=overwrite)
    except OSError as exc:  # read-only or unreachable --out: a user problem, not a bug
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(f"--out {str(root)!r} cannot be used: {reason}; pass a folder you can write to") from exc


def _prepare_run_dir(run: RunDir, *, resume: bool, overwrite: bool) -> RunDir:
    root = run.root
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {str(root)!r} is a file; pass a folder path")
    occupied = run.root.is_dir() and any(run.root.iterdir())
    if resume:
        if not run.is_run():
            raise ConfigError(f"--resume: {str(root)!r} holds no run to resume (no config.json)")
        remove_stale_temps(run)
        return run
    if occupied and not overwrite:
        raise ConfigError(
            f"--out {str(root)!r} already holds files; pass --resume to continue that run, --overwrite to "
            "replace it, or another --out"
        )
    if occupied and overwrite:
        if not run.is_run():
            raise ConfigError(f"--overwrite refuses {str(root)!r}: it is not an adapmtl run folder")
        states = (run.state, run.prev_state, sidecar(run.state), sidecar(run.prev_state))
        for p in (run.metrics, *states, run.report, run.weights, run.dense_metrics):
            if p.exists():
                p.unlink()
        remove_stale_temps(run)
    run.root.mkdir(parents=True, exist_ok=True)
    # Probe now: a read-only folder fails here with its name, before any work is done.
    fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=run.root)
    os.close(fd)
    os.unlink(probe)
    return run

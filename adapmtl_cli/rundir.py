"""Run-folder layout and atomic writes (temp file, fsync, rename): a crash never leaves half a file.

```
RUN/
  config.json        resolved PruneConfig
  components.json    ComponentsManifest (discovery)
  dense_metrics.json dense model on the validation split (computed once, reused on --resume)
  metrics.jsonl      one line per logged step
  state/latest.pt    resume state (model + thresholds, optimizer, weighting, RNG, step); previous kept as prev.pt
  pruned.safetensors baked weights (exact zeros), keys as in the user's state_dict
  report.json        RunReport
  export/            written by `adapmtl export`
```
"""

from __future__ import annotations

import json
import os
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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then move ``tmp`` over ``path``; ``path`` is either old or complete, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


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
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {str(root)!r} is a file; pass a folder path")
    occupied = run.root.is_dir() and any(run.root.iterdir())
    if resume:
        if not run.is_run():
            raise ConfigError(f"--resume: {str(root)!r} holds no run to resume (no config.json)")
        return run
    if occupied and not overwrite:
        raise ConfigError(
            f"--out {str(root)!r} already holds files; pass --resume to continue that run, --overwrite to "
            "replace it, or another --out"
        )
    if occupied and overwrite:
        if not run.is_run():
            raise ConfigError(f"--overwrite refuses {str(root)!r}: it is not an adapmtl run folder")
        for p in (run.metrics, run.state, run.prev_state, run.report, run.weights, run.dense_metrics):
            if p.exists():
                p.unlink()
    run.root.mkdir(parents=True, exist_ok=True)
    return run

"""Run-folder layout: where each file of a run lives, and when a folder may be used, resumed or overwritten.

```
RUN/
  config.json        resolved PruneConfig
  components.json    ComponentsManifest (discovery)
  dense_metrics.json dense model on the validation split (computed once, reused on --resume)
  metrics.jsonl      one line per logged step
  state/latest.pt    resume state (model + thresholds, optimizer, weighting, RNG, step); previous kept as prev.pt;
                     each with a ``.sha256`` sidecar (see ``train/state_files.py``)
  pruned.safetensors baked weights (exact zeros), keys as in the user's state_dict
  report.json        RunReport
  export/            written by `adapmtl export`
```

Files in it are written with ``files/atomic.py`` (temp file, fsync, rename): a crash never leaves half a file,
only a stale ``.NAME.*.tmp`` that :func:`remove_stale_temps` deletes on resume.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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


def remove_stale_temps(run: RunDir) -> list[Path]:
    """Delete the temporary files a killed process left behind (``.NAME.*.tmp``); return them."""
    stale = []
    for folder in (run.root, run.state_dir):
        if folder.is_dir():
            stale += [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


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

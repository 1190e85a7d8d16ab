"""Resume-state files: checksummed saves that keep the last two, and loading the newest intact one.

``state/latest.pt`` and ``state/prev.pt`` are ``torch.save`` files (opened with ``weights_only=True``: a state
file never runs code), each with a ``NAME.sha256`` sidecar in ``sha256sum`` format. A save never destroys
anything before the new state is complete on disk:

1. write the new state to a temporary file (fsync), hashing it on the way;
2. retire the old pair: ``latest.pt.sha256 -> prev.pt.sha256``, then ``latest.pt -> prev.pt``;
3. write ``latest.pt.sha256`` (atomically), then rename the temporary file to ``latest.pt``; fsync the folder.

The whole save is one ``atomic_write`` (``files/atomic.py``); step 2 and the sidecar of step 3 run as its
``before_replace``, after the temporary file is synced and before it is renamed.

A crash between any two of these leaves at least one state that loads: a file whose sidecar names another hash
is rejected, a file without a sidecar is used only when no verified one exists (a crash inside step 2, or a
run saved before checksums existed). A full disk fails in step 1, before anything was renamed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from adapmtl_cli.files.atomic import atomic_write, torch_save_file, write_text
from adapmtl_cli.files.identity import file_sha256
from adapmtl_cli.files.rundir import RunDir, sidecar

T = TypeVar("T")


class _HashedSave:
    """The ``write`` step of a state save: ``torch.save``, hashing what it writes, keeping the sha256."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.digest = ""

    def __call__(self, tmp: Path) -> None:
        sha = hashlib.sha256()
        torch_save_file(self.payload, tmp, sha)  # a failed write raises its OSError, which atomic_write names
        self.digest = sha.hexdigest()


def _retire_latest(run: RunDir, digest: str) -> None:
    """Step 2 and the sidecar of step 3: the old pair becomes ``prev``, then the new state's sidecar is written."""
    latest, prev = run.state, run.prev_state
    if latest.is_file():
        if sidecar(latest).is_file():
            os.replace(sidecar(latest), sidecar(prev))
        else:
            sidecar(prev).unlink(missing_ok=True)
        os.replace(latest, prev)
    write_text(sidecar(latest), f"{digest}  {latest.name}\n")


def save_state(run: RunDir, payload: dict[str, Any]) -> None:
    """Make ``payload`` the new ``state/latest.pt``; the previous latest becomes ``state/prev.pt``.

    Raises:
        ConfigError: the state folder cannot be written (read-only, full disk); both older states are kept.
    """
    save = _HashedSave(payload)
    # The old pair is retired only once the new file is complete and synced (step 1 done).
    atomic_write(run.state, save, before_replace=lambda: _retire_latest(run, save.digest))


def verify(path: Path) -> str | None:
    """``None`` when ``path`` matches its sidecar's sha256, else why not (``"no checksum file"`` among them)."""
    side = sidecar(path)
    if not side.is_file():
        return "no checksum file"
    try:
        words = side.read_text(encoding="utf-8").split()
        want = words[0].lower() if words else ""
        got = file_sha256(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else None
        return f"unreadable ({reason or exc})"
    if got != want:
        return "checksum mismatch (damaged or truncated)"
    return None


@dataclass(frozen=True)
class LoadedState(Generic[T]):
    """The state resumed from (``None`` when no file is usable) and what was wrong with the others."""

    value: T | None
    path: Path | None
    verified: bool = True
    rejected: list[str] = field(default_factory=list)
    """``"NAME: reason"`` for each state file newer than the one used (all of them when none was usable)."""


def load_state(run: RunDir, parse: Callable[[dict[str, Any]], T]) -> LoadedState[T]:
    """The newest state file that is intact and that ``parse`` accepts.

    Verified files (sidecar matches) first, newest first; then files without a sidecar. A file whose sidecar
    disagrees is never used.
    """
    candidates = [p for p in (run.state, run.prev_state) if p.is_file()]
    reasons = {p: verify(p) for p in candidates}
    unverified = [p for p in candidates if reasons[p] == "no checksum file"]
    for path in [p for p in candidates if reasons[p] is None] + unverified:
        try:
            value = parse(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # a damaged or foreign file: fall back to the next one
            detail = " ".join(str(exc).split())[:120]
            reasons[path] = f"cannot be read ({type(exc).__name__}: {detail})"
            continue
        newer = candidates[: candidates.index(path)]
        return LoadedState(value, path, path not in unverified, [f"{p.name}: {reasons[p]}" for p in newer])
    return LoadedState(None, None, rejected=[f"{p.name}: {reasons[p]}" for p in candidates])

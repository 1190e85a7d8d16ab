"""File identity: a file's size and sha256, to tell later whether a path still names the same file.

A run records its checkpoint's identity when it starts (``jobs/run_inputs.py``); resume state files carry a
sha256 sidecar (``train/state_files.py``). Only regular files are hashed: a FIFO or a device would never end.
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The sha256 of ``path``'s bytes, in hex.

    Raises:
        OSError: the file cannot be read.
    """
    sha = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def identify(path: Path) -> tuple[int, str] | None:
    """``(size in bytes, sha256)`` of a regular file; ``None`` when ``path`` is not one or cannot be read."""
    try:
        if not stat.S_ISREG(Path(path).stat().st_mode):
            return None
        return Path(path).stat().st_size, file_sha256(path)
    except OSError:
        return None

"""What the scene generators share: the summary they return, the check of their parameters, atomic file writes.

Every file goes through ``files.atomic`` (temp file, fsync, rename), so a crash or a full disk never leaves half
a file behind, and a failed write is one ``DataError`` line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.files.atomic import atomic_write


@dataclass(frozen=True)
class SceneSummary:
    """What a generator wrote: where, how many samples per split, image size, seed and time taken."""

    root: Path
    train: int
    val: int
    size: tuple[int, int]
    seed: int
    seconds: float
    test: int = 0
    """Samples of the held-out test split (0: none written)."""


def check_generator_parameters(
    train: int, val: int, size: tuple[int, int], seed: int, test: int = 0, **choices: tuple[str, tuple[str, ...]]
) -> None:
    """One ``ConfigError`` naming every bad count, size or seed (and every ``name=(value, allowed)`` choice)."""
    problems = []
    if train < 1 or val < 1:
        problems.append(f"sample counts must be at least 1, got train={train!r} val={val!r}")
    if test < 0:
        problems.append(f"the test sample count must be 0 (no test split) or more, got test={test!r}")
    if len(size) != 2 or min(size) < 8:
        problems.append(f"size must be (height, width) with both at least 8, got {size!r}")
    if seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            problems.append(f"{name} {value!r} must be one of: {', '.join(allowed)}")
    if problems:
        raise ConfigError("; ".join(problems))


def write_error(path: Path, exc: OSError) -> DataError:
    """The one-line error for a generated file that cannot be written (read-only folder, full disk)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return DataError(f"cannot write {str(path)!r}: {reason}; check that the folder is writable and the disk has space")


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically (``files.atomic``), so a crash never leaves half a file behind."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write, error=write_error, parents=False)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) ``array`` as PNG, atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), error=write_error, parents=False)


def write_json(path: Path, content: object) -> None:
    """Write ``content`` as indented JSON, atomically."""
    text = json.dumps(content, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), error=write_error, parents=False)

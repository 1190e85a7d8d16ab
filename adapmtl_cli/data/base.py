"""The dataset-adapter contract: a folder on disk -> an indexable multitask dataset plus its task specs."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from adapmtl_cli.tasks.base import TaskSpec

Sample = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""One item: image ``(3, H, W)`` float32, and ``{task name: target}``.

Targets by task: ``segmentation`` int64 ``(H, W)`` with -1 = ignore; ``depth`` float32 ``(1, H, W)`` in metres
with 0 = invalid; ``normal`` float32 ``(3, H, W)`` unit vectors with an all-zero vector = invalid.
"""


@runtime_checkable
class DatasetAdapter(Protocol):
    """Opens one on-disk layout. ``name`` is the registry key and the ``--data`` value."""

    name: str

    def tasks(self, root: Path) -> list[TaskSpec]:
        """The tasks this dataset provides, in a fixed order."""
        ...

    def open(self, root: Path, split: str) -> Dataset[Sample]:
        """The ``split`` (``"train"`` or ``"val"``) under ``root``; raises ``DataError`` on a bad layout."""
        ...

"""The dataset-adapter contract: a folder on disk -> indexable multitask datasets plus their task specs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.tasks.base import TaskSpec

Sample = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""One item: the input (e.g. an image ``(3, H, W)`` float32), and ``{task name: target}``.

Targets of the built-in dense kinds: ``segmentation`` int64 ``(H, W)`` with -1 = ignore; ``depth`` float32
``(1, H, W)``, 0 = invalid; ``normal`` float32 ``(3, H, W)`` unit vectors, an all-zero vector = invalid. Each task
kind documents its own target format in its module under ``adapmtl_cli.tasks``.
"""


@runtime_checkable
class DatasetAdapter(Protocol):
    """Opens one on-disk layout. ``name`` is the registry key and the ``--data`` value.

    Adapters are built by their registered factory from the ``--data-opt KEY=VALUE`` options (``--layout`` and
    ``--augment`` are shorthands for ``layout=...`` and ``augment=true``); an adapter rejects options it does not
    know with :func:`check_options`. Training-time augmentation, when enabled, applies to the ``train`` split only.
    """

    name: str

    def tasks(self, root: Path) -> list[TaskSpec]:
        """The tasks this dataset provides, in a fixed order."""
        ...

    def open(self, root: Path, split: str) -> Dataset[Sample]:
        """The ``split`` (one of :data:`SPLITS`) under ``root``; raises ``DataError`` on a bad layout.

        ``val`` is what ``prune`` evaluates on by default; ``test`` (``--eval-split test``) is the held-out split,
        and a root without one gives a one-line ``DataError`` naming the folder or index it looked in. Opening
        validates everything that can be checked without decoding every sample (names, counts, shapes from
        headers), so a bad folder fails before training starts, with the file named.
        """
        ...

    def describe(self, root: Path) -> dict[str, Any]:
        """Validate every split present and summarise the folder for ``adapmtl data check``.

        Keys: ``root``, ``layout``, ``splits`` (``{split: {"folder", "samples", "size"}}``, ``test`` only where the
        folder has one), ``tasks`` (names),
        ``sampled`` (``{"split", "samples"}``: what the statistics below were computed on), ``class_pixels``
        (``{class name or "ignore": pixels}``, or None without a segmentation task), ``depth_invalid_ratio``
        (float or None). Adapters may add keys; renderers show the known ones.
        """
        ...


SPLITS = ("train", "val", "test")
"""The split names ``open`` takes: ``train`` to fine-tune on, ``val`` to tune settings on, ``test`` held out."""


def unknown_split(split: str) -> DataError:
    """The one-line error for a split name that is none of :data:`SPLITS`."""
    return DataError(f"unknown split {split!r}; use 'train', 'val' or 'test'")


TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


def check_options(dataset: str, options: Mapping[str, str], known: Mapping[str, str]) -> None:
    """Raise ``ConfigError`` naming the first option of ``options`` not in ``known`` (option -> help text)."""
    for key in options:
        if key not in known:
            hint = "; ".join(f"{k}: {v}" for k, v in known.items()) or "it takes none"
            raise ConfigError(f"--data {dataset} has no option {key!r} ({hint})")


def bool_option(dataset: str, key: str, value: str) -> bool:
    """Parse a boolean ``--data-opt`` value (true/false, yes/no, on/off, 1/0)."""
    folded = value.strip().lower()
    if folded in TRUE:
        return True
    if folded in FALSE:
        return False
    raise ConfigError(f"--data {dataset} option {key}={value!r} must be true or false")


def choice_option(dataset: str, key: str, value: str, choices: tuple[str, ...]) -> str:
    """Check a ``--data-opt`` value against its allowed ``choices``."""
    if value not in choices:
        raise ConfigError(f"--data {dataset} option {key}={value!r} must be one of: {', '.join(choices)}")
    return value

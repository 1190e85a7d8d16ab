"""Registry of dataset adapters (the ``--data`` values)."""

from __future__ import annotations

from collections.abc import Callable

from adapmtl_cli.data.base import DatasetAdapter, Sample
from adapmtl_cli.errors import ConfigError

DATASETS: dict[str, Callable[[], DatasetAdapter]] = {}


def register_dataset(name: str) -> Callable[[Callable[[], DatasetAdapter]], Callable[[], DatasetAdapter]]:
    """Register a dataset adapter factory under ``name``; registering a name twice is a bug."""

    def wrap(factory: Callable[[], DatasetAdapter]) -> Callable[[], DatasetAdapter]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        DATASETS[name] = factory
        return factory

    return wrap


def get_dataset(name: str) -> DatasetAdapter:
    """The adapter registered as ``name``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]()


from adapmtl_cli.data import nyuv2  # noqa: E402,F401  (registration side effects)

__all__ = ["DATASETS", "DatasetAdapter", "Sample", "get_dataset", "register_dataset"]

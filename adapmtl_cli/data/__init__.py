"""Dataset adapters (the ``--data`` values): the registry, the adapter contract, and the built-in layouts.

Importing this package registers the built-in datasets: each adapter module registers its own with
:func:`~adapmtl_cli.data.registry.register_dataset`, so the registry never imports an adapter.
"""

from __future__ import annotations

from adapmtl_cli.data import nyuv2, taskonomy  # noqa: F401  (registration side effects)
from adapmtl_cli.data.base import DatasetAdapter, Sample
from adapmtl_cli.data.registry import DATASETS, AdapterFactory, get_dataset, is_plugin_reference, register_dataset

__all__ = [
    "DATASETS",
    "AdapterFactory",
    "DatasetAdapter",
    "Sample",
    "get_dataset",
    "is_plugin_reference",
    "register_dataset",
]

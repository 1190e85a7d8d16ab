"""Registry of dataset adapters (the ``--data`` values), and plug-in datasets loaded from the user's code."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from adapmtl_cli.data.base import DatasetAdapter, Sample
from adapmtl_cli.errors import ConfigError

AdapterFactory = Callable[..., DatasetAdapter]
"""Builds an adapter from its ``--data-opt`` options, given as keyword string values."""

DATASETS: dict[str, AdapterFactory] = {}


def register_dataset(name: str) -> Callable[[AdapterFactory], AdapterFactory]:
    """Register a dataset adapter factory under ``name``; registering a name twice is a bug."""

    def wrap(factory: AdapterFactory) -> AdapterFactory:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        DATASETS[name] = factory
        return factory

    return wrap


def is_plugin_reference(name: str) -> bool:
    """Whether ``--data`` names user code (``path/to/plugin.py`` or ``package.module``) rather than a built-in."""
    return name not in DATASETS and (name.endswith(".py") or "/" in name or "\\" in name or "." in name)


def get_dataset(name: str, options: Mapping[str, str] | None = None) -> DatasetAdapter:
    """The adapter registered as ``name`` (or the plug-in it names), built with ``options``."""
    options = dict(options or {})
    if name in DATASETS:
        return DATASETS[name](**options)
    if is_plugin_reference(name):
        from adapmtl_cli.data.plugin import load_plugin

        return load_plugin(name, options)
    raise ConfigError(
        f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}, "
        "or pass your own as path/to/plugin.py or package.module"
    )


from adapmtl_cli.data import nyuv2, taskonomy  # noqa: E402,F401  (registration side effects)

__all__ = ["DATASETS", "DatasetAdapter", "Sample", "get_dataset", "is_plugin_reference", "register_dataset"]

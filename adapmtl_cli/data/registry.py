"""The dataset registry: the ``--data`` values, their adapter factories, and plug-in datasets named by path."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from adapmtl_cli.data.base import DatasetAdapter
from adapmtl_cli.data.plugin import load_plugin
from adapmtl_cli.errors import ConfigError

AdapterFactory = Callable[..., DatasetAdapter]
"""Builds an adapter from its ``--data-opt`` options, given as keyword string values."""

DATASETS: dict[str, AdapterFactory] = {}
"""``--data`` value -> factory; filled by the adapter modules that ``adapmtl_cli.data`` imports."""


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
        return load_plugin(name, options)
    raise ConfigError(
        f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}, "
        "or pass your own as path/to/plugin.py or package.module"
    )

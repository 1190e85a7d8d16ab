"""Registry of pruning methods (the ``--method`` values); ``adapmtl`` is the default, the rest are baselines."""

from __future__ import annotations

from collections.abc import Callable

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods.base import MethodContext, Pruner

METHODS: dict[str, Callable[[MethodContext], Pruner]] = {}
DEFAULT_WEIGHTING: dict[str, str] = {}
"""Task weighting each method uses unless ``--weighting`` says otherwise."""
DEFAULT_LAYER_SCALE: dict[str, str | None] = {}
"""Layer scales each threshold method uses unless ``--layer-scale`` says otherwise (None: mask methods)."""


def register_method(
    name: str, *, weighting: str = "equal", layer_scale: str | None = None
) -> Callable[[Callable[[MethodContext], Pruner]], Callable[[MethodContext], Pruner]]:
    """Register a method factory under ``name``; registering a name twice is a bug."""

    def wrap(factory: Callable[[MethodContext], Pruner]) -> Callable[[MethodContext], Pruner]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = factory
        DEFAULT_WEIGHTING[name] = weighting
        DEFAULT_LAYER_SCALE[name] = layer_scale
        return factory

    return wrap


def build_pruner(name: str, ctx: MethodContext) -> Pruner:
    """Apply method ``name`` to ``ctx.model``."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name](ctx)


from adapmtl_cli.methods import (  # noqa: E402,F401  (registration side effects, in display order)
    adapmtl,
    disparse,
    gmp,
    magnitude_oneshot,
    str_global,
    str_layer,
    uniform_magnitude,
)

__all__ = [
    "DEFAULT_LAYER_SCALE",
    "DEFAULT_WEIGHTING",
    "METHODS",
    "MethodContext",
    "Pruner",
    "build_pruner",
    "register_method",
]

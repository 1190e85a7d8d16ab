"""The method registry: ``--method`` name -> factory, each method's defaults, and the rules on their options."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods.base import MethodContext, Pruner
from adapmtl_cli.sparsity.allocation import ALLOCATIONS
from adapmtl_cli.sparsity.schedule import check_bounds
from adapmtl_cli.sparsity.settle import SETTLES

METHODS: dict[str, Callable[[MethodContext], Pruner]] = {}
DEFAULT_WEIGHTING: dict[str, str] = {}
"""Task weighting each method uses unless ``--weighting`` says otherwise."""
DEFAULT_LAYER_SCALE: dict[str, str | None] = {}
"""Layer scales each threshold method uses unless ``--layer-scale`` says otherwise (None: mask methods)."""
CALIBRATES: set[str] = set()
"""Methods that score weights with task gradients on training batches whatever their layer scale."""
COMPONENT_BOUNDS: set[str] = set()
"""Methods with one learned threshold per component, which ``--component-sparsity`` bounds."""
DEFAULT_ALLOCATION: dict[str, str] = {}
"""How each threshold method moves its split between groups unless ``--allocation`` says otherwise."""
DEFAULT_SETTLE: dict[str, str] = {}
"""What each threshold method does once its ramp reaches the target unless ``--settle`` says otherwise."""
STRUCTURES: dict[str, tuple[str, ...]] = {}
"""What each method can prune (``--structure``), its default first: ``weight`` and/or ``channel``."""
CHANNEL_TARGETS: dict[str, tuple[str, ...]] = {}
"""What a channel method's level can count (``--target``): ``channels``, and ``flops`` for learned thresholds."""


def register_method(
    name: str,
    *,
    weighting: str = "equal",
    layer_scale: str | None = None,
    calibrates: bool = False,
    component_bounds: bool = False,
    allocation: str = "adam",
    settle: str = "thresholds",
    structures: tuple[str, ...] = ("weight",),
    channel_targets: tuple[str, ...] = ("channels",),
) -> Callable[[Callable[[MethodContext], Pruner]], Callable[[MethodContext], Pruner]]:
    """Register a method factory under ``name``; registering a name twice is a bug.

    Args:
        weighting: the task weighting the method uses unless asked otherwise.
        layer_scale: the layer scales of a threshold method (None: the method prunes with masks).
        calibrates: the method always scores weights with task gradients (needs calibration batches).
        component_bounds: the method has one learned threshold per component (``--component-sparsity``).
        allocation: a threshold method's default ``--allocation`` (the factory must build it with this one).
        settle: a threshold method's default ``--settle`` (the factory must build it with this one).
        structures: what the method prunes (``--structure`` values), its default first.
        channel_targets: what a channel run's level can count (``--target`` values).
    """

    def wrap(factory: Callable[[MethodContext], Pruner]) -> Callable[[MethodContext], Pruner]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = factory
        DEFAULT_WEIGHTING[name] = weighting
        DEFAULT_LAYER_SCALE[name] = layer_scale
        STRUCTURES[name] = structures
        if "channel" in structures:
            CHANNEL_TARGETS[name] = channel_targets
        if layer_scale is not None:
            DEFAULT_ALLOCATION[name] = allocation
            DEFAULT_SETTLE[name] = settle
        if calibrates:
            CALIBRATES.add(name)
        if component_bounds:
            COMPONENT_BOUNDS.add(name)
        return factory

    return wrap


def check_method(name: str) -> None:
    """Refuse a method name that is not registered, listing the ones that are."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")


def weighting_name(method: str, weighting: str | None) -> str:
    """``weighting`` if given, else the method's own default (norm for adapmtl, paper for adapmtl_paper, else equal)."""
    check_method(method)
    return weighting or DEFAULT_WEIGHTING[method]


def structure_name(method: str, structure: str | None) -> str:
    """``structure`` if given, else what the method prunes by default (``weight``; ``channel`` for the ``tp_*``
    baselines)."""
    check_method(method)
    return structure or STRUCTURES[method][0]


def layer_scale_name(method: str, layer_scale: str | None, structure: str | None = None) -> str | None:
    """``layer_scale`` if given, else the method's own default; None for methods without thresholds and for
    channel runs (channel norms are normalised per group instead)."""
    check_method(method)
    if structure_name(method, structure) == "channel":
        return None
    default = DEFAULT_LAYER_SCALE[method]
    return (layer_scale or default) if default is not None else None


def allocation_name(method: str, allocation: str | None) -> str | None:
    """``allocation`` if given, else the method's own default; None for methods without thresholds."""
    check_method(method)
    if DEFAULT_LAYER_SCALE[method] is None:
        return None
    return allocation or DEFAULT_ALLOCATION[method]


def settle_name(method: str, settle: str | None, structure: str | None = None) -> str | None:
    """``settle`` if given, else the method's own default; None for methods without thresholds and for channel
    runs (their channel gates have no fixed-mask phase)."""
    check_method(method)
    if DEFAULT_LAYER_SCALE[method] is None or structure_name(method, structure) == "channel":
        return None
    return settle or DEFAULT_SETTLE[method]


def needs_calibration(method: str, layer_scale: str | None, structure: str | None = None) -> bool:
    """Whether building ``method`` scores weights by task saliency on training batches."""
    return method in CALIBRATES or layer_scale_name(method, layer_scale, structure) == "saliency"


def check_method_options(
    method: str,
    *,
    layer_scale: str | None,
    bounds: Mapping[str, tuple[float, float]] | None,
    sizes: Mapping[str, int],
    sparsity: float,
    allocation: str | None = None,
    structure: str | None = None,
    target: str | None = None,
    settle: str | None = None,
) -> None:
    """Every rule on how a method's options combine, checked before any work (the one place they live).

    ``--layer-scale`` and ``--allocation`` need a threshold method; ``--component-sparsity`` needs one learned
    threshold per component, bounds on known components and a split that can meet the target;
    ``--structure`` must be one the method prunes, and ``--structure channel`` takes no layer scale and no bounds;
    ``--target`` needs a channel run, and ``flops`` a method that registered it (learned thresholds).

    Args:
        sizes: per component, its prunable weights (components without any are left out).
    """
    check_method(method)
    _check_structure(method, structure, target, layer_scale, bounds)
    if layer_scale is not None and DEFAULT_LAYER_SCALE[method] is None:
        scaled = ", ".join(m for m, s in DEFAULT_LAYER_SCALE.items() if s)
        raise ConfigError(
            f"--layer-scale scales learned thresholds (--method {scaled}); --method {method} prunes with masks"
        )
    if allocation is not None and DEFAULT_LAYER_SCALE[method] is None:
        raise ConfigError(f"--allocation moves learned thresholds; --method {method} prunes with masks")
    if allocation is not None and allocation not in ALLOCATIONS:
        raise ConfigError(f"--allocation {allocation!r} is not one of {', '.join(ALLOCATIONS)}")
    _check_settle(method, settle, structure)
    if not bounds:
        return
    if method not in COMPONENT_BOUNDS:
        raise ConfigError(
            f"--component-sparsity needs one learned threshold per component (--method "
            f"{', '.join(sorted(COMPONENT_BOUNDS))}); --method {method} has none"
        )
    check_bounds(dict(bounds), dict(sizes), sparsity)


def _check_settle(method: str, settle: str | None, structure: str | None) -> None:
    if settle is None:
        return
    if settle not in SETTLES:
        raise ConfigError(f"--settle {settle!r} is not one of {', '.join(SETTLES)}")
    if DEFAULT_LAYER_SCALE[method] is None:
        raise ConfigError(
            f"--settle says what learned thresholds do at the target; --method {method} prunes with masks"
        )
    if structure_name(method, structure) == "channel":
        raise ConfigError("--settle fixes a weight mask; it does not apply to --structure channel (drop --settle)")


STRUCTURE_VALUES = ("weight", "channel")
TARGET_VALUES = ("channels", "flops")


def _check_structure(
    method: str,
    structure: str | None,
    target: str | None,
    layer_scale: str | None,
    bounds: Mapping[str, tuple[float, float]] | None,
) -> None:
    if structure is not None and structure not in STRUCTURE_VALUES:
        raise ConfigError(f"--structure {structure!r} is not one of {', '.join(STRUCTURE_VALUES)}")
    chosen = structure_name(method, structure)
    if chosen not in STRUCTURES[method]:
        able = ", ".join(m for m, s in STRUCTURES.items() if chosen in s)
        raise ConfigError(
            f"--method {method} prunes {' or '.join(STRUCTURES[method])}s; --structure {chosen} "
            f"works with --method {able}"
        )
    if target is not None and target not in TARGET_VALUES:
        raise ConfigError(f"--target {target!r} is not one of {', '.join(TARGET_VALUES)}")
    if chosen == "weight" and target is not None:
        raise ConfigError("--target chooses what a channel run counts; it needs --structure channel")
    if chosen == "channel" and target is not None and target not in CHANNEL_TARGETS[method]:
        able = ", ".join(m for m, t in CHANNEL_TARGETS.items() if target in t)
        raise ConfigError(
            f"--method {method} removes channels by count; --target {target} needs learned thresholds (--method {able})"
        )
    if chosen == "channel" and layer_scale is not None:
        raise ConfigError(
            "--layer-scale scales weight thresholds; --structure channel normalises each channel "
            "group's norms instead (drop --layer-scale)"
        )
    if chosen == "channel" and bounds:
        raise ConfigError("--component-sparsity bounds weight sparsity; it does not apply to --structure channel")


def build_pruner(name: str, ctx: MethodContext) -> Pruner:
    """Apply method ``name`` to ``ctx.model`` after checking how its options combine."""
    sizes = {c.name: c.prunable_params for c in ctx.cmap.components if c.prunable_params}
    check_method_options(
        name,
        layer_scale=ctx.layer_scale,
        bounds=ctx.bounds,
        sizes=sizes,
        sparsity=ctx.sparsity,
        allocation=ctx.allocation,
        structure=ctx.structure,
        target=ctx.target,
        settle=ctx.settle,
    )
    return METHODS[name](dataclasses.replace(ctx, structure=structure_name(name, ctx.structure)))

"""Pruning methods (the ``--method`` values): ``adapmtl`` is the default, the rest are baselines.

The registry lives in ``registry.py``; importing this package registers every method, in display order.
"""

from __future__ import annotations

from adapmtl_cli.methods import (  # noqa: F401  (registration side effects, in display order)
    adapmtl,
    adapmtl_paper,
    disparse,
    disparse_dynamic,
    gmp,
    imp,
    lth,
    magnitude_oneshot,
    snip,
    str_global,
    str_layer,
    tp_magnitude,
    tp_taylor,
    uniform_magnitude,
)
from adapmtl_cli.methods.base import MethodContext, Pruner
from adapmtl_cli.methods.registry import (
    CALIBRATES,
    COMPONENT_BOUNDS,
    DEFAULT_ALLOCATION,
    DEFAULT_LAYER_SCALE,
    DEFAULT_SETTLE,
    DEFAULT_WEIGHTING,
    METHODS,
    STRUCTURES,
    allocation_name,
    build_pruner,
    check_method,
    check_method_options,
    layer_scale_name,
    needs_calibration,
    register_method,
    settle_name,
    structure_name,
    weighting_name,
)

__all__ = [
    "DEFAULT_ALLOCATION",
    "allocation_name",
    "CALIBRATES",
    "COMPONENT_BOUNDS",
    "DEFAULT_LAYER_SCALE",
    "DEFAULT_SETTLE",
    "DEFAULT_WEIGHTING",
    "METHODS",
    "STRUCTURES",
    "MethodContext",
    "Pruner",
    "build_pruner",
    "check_method",
    "check_method_options",
    "layer_scale_name",
    "needs_calibration",
    "register_method",
    "settle_name",
    "structure_name",
    "weighting_name",
]

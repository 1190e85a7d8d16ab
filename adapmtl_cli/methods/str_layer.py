"""STR's own granularity: one soft threshold per layer (instead of one per component)."""

from __future__ import annotations

from adapmtl_cli.methods import register_method
from adapmtl_cli.methods.base import MethodContext, ThresholdPruner


@register_method("str_layer", layer_scale="none")
def build(ctx: MethodContext) -> ThresholdPruner:
    return ThresholdPruner("str_layer", ctx, "layer")

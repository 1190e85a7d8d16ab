"""STR's own granularity: one soft threshold per layer (instead of one per component)."""

from __future__ import annotations

from adapmtl_cli.methods.base import MethodContext, ThresholdPruner
from adapmtl_cli.methods.registry import register_method


@register_method("str_layer", layer_scale="none")
def build(ctx: MethodContext) -> ThresholdPruner:
    return ThresholdPruner("str_layer", ctx, "layer")

"""STR-style (Kusupati et al. 2020) baseline: one soft threshold shared by every prunable layer."""

from __future__ import annotations

from adapmtl_cli.methods.base import MethodContext, ThresholdPruner
from adapmtl_cli.methods.registry import register_method


@register_method("str_global", layer_scale="none")
def build(ctx: MethodContext) -> ThresholdPruner:
    return ThresholdPruner("str_global", ctx, "global")

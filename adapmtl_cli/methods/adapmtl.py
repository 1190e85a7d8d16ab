"""AdapMTL (Xiang et al., ACM MM 2024): one learnable soft threshold per component + adaptive task weights."""

from __future__ import annotations

from adapmtl_cli.methods import register_method
from adapmtl_cli.methods.base import MethodContext, ThresholdPruner


@register_method("adapmtl", weighting="adaptive")
def build(ctx: MethodContext) -> ThresholdPruner:
    return ThresholdPruner("adapmtl", ctx, "component")

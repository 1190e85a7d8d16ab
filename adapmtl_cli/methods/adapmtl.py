"""AdapMTL (Xiang et al., ACM MM 2024): one learnable soft threshold per component + adaptive task weights."""

from __future__ import annotations

from adapmtl_cli.methods.base import MethodContext, ThresholdPruner
from adapmtl_cli.methods.registry import register_method

LAYER_SCALE = "saliency"


@register_method("adapmtl", weighting="adaptive", layer_scale=LAYER_SCALE, component_bounds=True)
def build(ctx: MethodContext) -> ThresholdPruner:
    # Per-component initial thresholds (each component's own magnitude quantile): see docs/architecture.md.
    # Per-layer threshold scales from task saliency (layer_scales.py): one learned threshold per component that
    # no longer empties a layer for its weights' scale alone. ``--layer-scale none`` is the paper's form.
    return ThresholdPruner("adapmtl", ctx, "component", per_group_init=True, layer_scale=LAYER_SCALE)

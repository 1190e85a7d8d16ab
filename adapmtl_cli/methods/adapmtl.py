"""AdapMTL (Xiang et al., ACM MM 2024): one learnable soft threshold per component + task-loss weights."""

from __future__ import annotations

from adapmtl_cli.methods.base import MethodContext, Pruner, ThresholdPruner
from adapmtl_cli.methods.channel_pruner import ChannelThresholdPruner
from adapmtl_cli.methods.registry import register_method

LAYER_SCALE = "saliency"
WEIGHTING = "norm"
"""Each task's loss over its dense level (``1/L⁰``). The robustness factor of ``adaptive`` did not beat it on the
quality benchmark's dev split (first 3 seeds: mean Δ_T at 90% / 95% norm −16.6 / −43.0, adaptive −16.5 / −45.9;
later 40 pairs: norm ahead by +0.57 [−0.19, +1.34]), so the simpler one is the default (issue #13, item 6); on
the test split the two tie (docs/architecture.md). ``--weighting adaptive`` keeps the robustness factor."""
SETTLE = "mask"
"""Once the ramp reaches the target the mask is fixed and the survivors fine-tune (``sparsity/settle.py``): on the
quality benchmark's dev split at 95% it removed the default's worst cells (docs/architecture.md, "Settling on a
fixed mask")."""
ALLOCATION = "marginal"
"""The split moves toward equal marginal loss per pruned weight (``sparsity/allocation.py``); chosen on the
quality benchmark's dev split over ``adam`` and ``frozen`` (docs/architecture.md, "How the split moves")."""


@register_method(
    "adapmtl",
    weighting=WEIGHTING,
    layer_scale=LAYER_SCALE,
    component_bounds=True,
    allocation=ALLOCATION,
    settle=SETTLE,
    structures=("weight", "channel"),
    channel_targets=("channels", "flops"),
)
def build(ctx: MethodContext) -> Pruner:
    if ctx.structure == "channel":
        # The same three parts on whole channels: one threshold per component on the channel groups' norms,
        # the marginal rule moving the split, the level controller landing on the channel (or FLOPs) target.
        return ChannelThresholdPruner("adapmtl", ctx, allocation=ALLOCATION)
    # Per-component initial thresholds (each component's own magnitude quantile): see docs/architecture.md.
    # Per-layer threshold scales from task saliency (layer_scales.py): one learned threshold per component that
    # no longer empties a layer for its weights' scale alone. ``--layer-scale none`` is the paper's form.
    return ThresholdPruner(
        "adapmtl",
        ctx,
        "component",
        per_group_init=True,
        layer_scale=LAYER_SCALE,
        allocation=ALLOCATION,
        settle=SETTLE,
    )

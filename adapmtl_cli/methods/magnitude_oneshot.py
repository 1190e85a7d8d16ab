"""Global magnitude pruning once, before fine-tuning: keep the largest ``|w|`` over all prunable layers."""

from __future__ import annotations

from adapmtl_cli.methods.base import MaskPruner, MethodContext
from adapmtl_cli.methods.registry import register_method


@register_method("magnitude_oneshot")
def build(ctx: MethodContext) -> MaskPruner:
    return MaskPruner("magnitude_oneshot", ctx, gradual=False)

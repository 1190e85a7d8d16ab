"""Gradual magnitude pruning (Zhu & Gupta 2017): global magnitude masks on the cubic schedule.

Masks are recomputed every ``steps // 50`` steps from the effective weights, so pruned weights stay pruned.
"""

from __future__ import annotations

from adapmtl_cli.methods.base import MaskPruner, MethodContext
from adapmtl_cli.methods.registry import register_method


@register_method("gmp")
def build(ctx: MethodContext) -> MaskPruner:
    return MaskPruner("gmp", ctx, gradual=True)

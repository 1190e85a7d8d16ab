"""Torch-Pruning's group Taylor pruning, the second channel baseline of issue #14.

Each channel's score is the first-order Taylor estimate of the loss change its removal causes, summed over its
coupled conv/linear slices: ``Σ |w · ∂L/∂w|`` (``tp.importance.GroupTaylorImportance()``'s order within each
group, tested), with ``L`` the weighted training loss of the step. One batch's gradient is noisy, so the score
is summed over every step since the last mask update (as Torch-Pruning's examples accumulate gradients over
several batches before they prune). Masks then follow ``tp_magnitude``'s recipe: the same fraction removed from
every group, on the cubic schedule, removed channels stay removed. The running sum is a buffer of the gated
model, so ``--resume`` and a rollback carry it exactly.
"""

from __future__ import annotations

import torch

from adapmtl_cli.methods.base import MethodContext
from adapmtl_cli.methods.channel_pruner import ChannelMaskPruner
from adapmtl_cli.methods.registry import register_method
from adapmtl_cli.sparsity.channel_gates import raw_weight_taylor


class TpTaylor(ChannelMaskPruner):
    def __init__(self, name: str, ctx: MethodContext) -> None:
        super().__init__(name, ctx)
        self.cm.register_buffer("taylor_sum", torch.zeros_like(self.cm.keep_mask))

    def after_step_(self, step: int) -> float:
        self.cm.get_buffer("taylor_sum").add_(raw_weight_taylor(self.cm))
        return super().after_step_(step)

    def scores(self) -> torch.Tensor:
        total = self.cm.get_buffer("taylor_sum")
        out = total.clone()
        total.zero_()  # the next update ranks on the gradients seen after this one
        return out


@register_method("tp_taylor", structures=("channel",))
def build(ctx: MethodContext) -> TpTaylor:
    return TpTaylor("tp_taylor", ctx)

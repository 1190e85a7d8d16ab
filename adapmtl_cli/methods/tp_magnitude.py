"""Torch-Pruning's group magnitude pruning, the channel baseline a user would pick instead (issue #14).

Torch-Pruning's recipe: rank each channel group's channels by group L2 magnitude (``GroupMagnitudeImportance``,
p=2: the sum of squared weights over every coupled slice, BatchNorm's gamma included, biases and beta not) and
remove about the same fraction of every group, groups of 8+ channels keeping multiples of ``KEEP_MULTIPLE`` as
the threshold rule does (Torch-Pruning's ``round_to=4``). Here the channels are removed on the
cubic schedule (masks updated every ``steps // 50`` steps, removed channels stay removed) inside the same step
budget and fine-tune as every other method. The ranking equals ``tp.importance.GroupMagnitudeImportance``'s
within each group (tests/methods/test_tp_magnitude.py checks it against the library).
"""

from __future__ import annotations

import torch

from adapmtl_cli.methods.base import MethodContext
from adapmtl_cli.methods.channel_pruner import ChannelMaskPruner
from adapmtl_cli.methods.registry import register_method
from adapmtl_cli.sparsity.channel_gates import raw_weight_squares


class TpMagnitude(ChannelMaskPruner):
    def scores(self) -> torch.Tensor:
        return raw_weight_squares(self.cm, biases=False)


@register_method("tp_magnitude", structures=("channel",))
def build(ctx: MethodContext) -> TpMagnitude:
    return TpMagnitude("tp_magnitude", ctx)

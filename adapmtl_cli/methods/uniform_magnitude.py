"""Uniform layer-wise magnitude pruning: every layer pruned to the target sparsity, once, then fine-tuned."""

from __future__ import annotations

import torch

from adapmtl_cli.methods.base import MaskPruner, MethodContext
from adapmtl_cli.methods.registry import register_method
from adapmtl_cli.sparsity.masks import effective_magnitudes


class UniformMagnitude(MaskPruner):
    """Per layer, keep exactly ``round((1 - s) * n_layer)`` largest weights."""

    @torch.no_grad()
    def apply_(self, sparsity: float) -> None:
        for fqn, mags in effective_magnitudes(self.mm).items():
            keep = mags.numel() - int(round(sparsity * mags.numel()))
            flat = torch.zeros(mags.numel(), dtype=torch.bool, device=mags.device)
            if keep:
                flat[torch.topk(mags.flatten(), keep, sorted=False).indices] = True
            self.mm.mask(fqn).copy_(flat.view_as(mags))


@register_method("uniform_magnitude")
def build(ctx: MethodContext) -> MaskPruner:
    return UniformMagnitude("uniform_magnitude", ctx, gradual=False)

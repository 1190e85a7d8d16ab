"""Binary weight masks for the magnitude-style baselines: injection, mask selection, baking.

``w_eff = w * m`` with ``m`` a boolean buffer per prunable layer (a parametrization, so the user's module is
untouched and baking gives plain weights). Mask selection keeps *exactly* ``round((1 - s) * N)`` weights:
ranking by a score and cutting at a count, never at a threshold value, so ties cannot overshoot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from adapmtl_cli.model.discover import ComponentMap
from adapmtl_cli.sparsity.thresholds import ParametrizedLayers, parameter_order, tie_parametrizations_


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask``; the mask is a buffer (saved with the model's state)."""

    mask: torch.Tensor

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


class MaskedModel(ParametrizedLayers):
    """The user's model with a mask on every prunable layer of the component map (groups = components)."""

    def mask(self, fqn: str) -> torch.Tensor:
        return cast(WeightMask, self.weight_parametrization(fqn)[0]).mask


def inject_masks_(model: nn.Module, cmap: ComponentMap) -> MaskedModel:
    """Parametrize every prunable layer with an all-ones mask; a tied alias shares its owner's mask."""
    order = parameter_order(model, [*(layer.fqn for layer in cmap.layers), *cmap.tied])
    mods = dict(model.named_modules())
    for layer in cmap.layers:
        module = mods[layer.fqn]
        parametrize.register_parametrization(module, "weight", WeightMask(module.weight.shape), unsafe=True)
    tie_parametrizations_(model, cmap.tied)
    return MaskedModel(model, {layer.fqn: layer.component for layer in cmap.layers}, order, cmap.tied)


@torch.no_grad()
def keep_top_(mm: MaskedModel, scores: Mapping[str, torch.Tensor], keep: int) -> None:
    """Set the masks so that exactly the ``keep`` highest-scoring weights (over all given layers) survive."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    keep = max(0, min(keep, flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep:
        chosen[torch.topk(flat, keep, sorted=False).indices] = True
    offset = 0
    for n in names:
        numel = scores[n].numel()
        mm.mask(n).copy_(chosen[offset : offset + numel].view_as(mm.mask(n)))
        offset += numel


@torch.no_grad()
def effective_magnitudes(mm: MaskedModel, fqns: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``|w * mask|`` per layer: already-pruned weights score 0 and stay pruned."""
    return {f: (mm.raw_weight(f) * mm.mask(f)).abs() for f in (fqns or list(mm.groups))}


@torch.no_grad()
def mask_zeros(mm: MaskedModel) -> dict[str, int]:
    """Zeros of each effective weight (masked, or exactly zero already)."""
    counts = [((mm.raw_weight(f) * mm.mask(f)) == 0).sum() for f in mm.groups]
    values = torch.stack(counts).tolist() if counts else []
    return dict(zip(mm.groups, (int(v) for v in values), strict=True))


@torch.no_grad()
def bake_masks_(mm: MaskedModel) -> nn.Module:
    """Plain weights ``w * mask`` (with ``+0.0`` for pruned entries); returns the user's model."""
    modules = list(mm.layer_modules().values())
    model = mm.unparametrize_()
    for module in modules:
        # w * 0 is -0.0 for negative w; adding +0.0 turns every zero into +0.0 and changes nothing else.
        cast(torch.Tensor, module.weight).add_(0.0)
    return model

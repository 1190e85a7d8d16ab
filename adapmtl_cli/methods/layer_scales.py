"""Per-layer threshold scales: one learnable threshold per component, measured in each layer's own units.

AdapMTL compares every weight of a component with the same threshold. Behind a normalisation layer the scale of
a weight tensor carries no meaning (BatchNorm undoes it), so a component whose layers differ in scale loses its
small-scale layers first, whatever they are worth: on MobileNetV2 whole depthwise layers are emptied at 90%
(layer collapse; docs/architecture.md). A layer scale ``m_l`` fixes that: layer ``l`` prunes where
``|w| <= m_l * sigmoid(s_c)``, still one learnable ``s_c`` per component.

``saliency`` scales: with the first-order task saliency ``|w * dL_t/dw|`` (invariant to that scale), rank every
weight of a component (best rank over the tasks that reach it, as DiSparse) and cut the component at the target
sparsity; layer ``l`` gets the share ``a_l`` of its weights below the cut, bounded to ``[LOW, HIGH]`` of the target
density, and ``m_l`` is the magnitude that prunes that share. Scales are then normalised to a
parameter-weighted geometric mean of 1 per component, so thresholds keep their usual range. The scales are fixed
for the run; the thresholds, the fine-tuning and the level controller work as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from adapmtl_cli.sparsity.thresholds import ThresholdedModel

LAYER_SCALES = ("saliency", "none")

DENSITY_FLOOR = 0.25
"""A layer keeps at least this fraction of the target density ``1 - s`` at the start (no layer starts empty)."""

SPARSITY_FLOOR = 0.25
"""A layer's start share is at least this fraction of the target sparsity (scales stay finite and comparable)."""


@torch.no_grad()
def saliency_scales(tm: ThresholdedModel, ranks: Sequence[torch.Tensor], sparsity: float) -> dict[str, float]:
    """Layer scales from per-weight saliency ranks (``ranks[k]`` for the k-th layer of ``tm.groups``)."""
    fqns = list(tm.groups)
    s = min(max(sparsity, 1e-3), 1 - 1e-3)
    high = 1.0 - DENSITY_FLOOR * (1.0 - s)
    low = SPARSITY_FLOOR * s
    scales: dict[str, float] = {}
    for group in tm.bank.groups:
        members = [k for k, f in enumerate(fqns) if tm.groups[f] == group]
        flat = torch.cat([ranks[k].flatten().float() for k in members])
        cut = float(flat.kthvalue(max(1, int(round(s * flat.numel())))).values)
        raw: dict[str, tuple[float, int]] = {}
        for k in members:
            w = tm.raw_weight(fqns[k]).detach().abs().flatten().float().cpu()
            share = float((ranks[k] <= cut).float().mean())
            share = min(max(share, low), high)
            m = float(w.kthvalue(max(1, int(round(share * w.numel())))).values)
            raw[fqns[k]] = (max(m, 1e-12), w.numel())
        total = sum(n for _, n in raw.values())
        log_mean = sum(math.log(m) * n for m, n in raw.values()) / total
        scales.update({f: math.exp(math.log(m) - log_mean) for f, (m, _) in raw.items()})
    return scales

"""Per-layer threshold scales: what they allocate, their invariance to a layer's scale, exact levels with them."""

from __future__ import annotations

import math

import pytest
import torch
from test_methods import _batch, _context, _run

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods import build_pruner
from adapmtl_cli.methods.base import MethodContext, ThresholdPruner
from adapmtl_cli.methods.layer_scales import DENSITY_FLOOR, SPARSITY_FLOOR, saliency_scales
from adapmtl_cli.sparsity.schedule import fit_level_
from adapmtl_cli.sparsity.thresholds import init_thresholds_, inject_thresholds_, measure_layers


def _tm(sparsity: float = 0.9):
    ctx = _context(sparsity, 10)
    return inject_thresholds_(ctx.model, ctx.cmap, "component"), ctx


def _encoder_convs(tm) -> list[str]:
    return [f for f in tm.groups if f.startswith("encoder")]


def test_scales_start_every_layer_at_its_saliency_share() -> None:
    """Layer l starts pruned at the share of its weights below the component's saliency cut (clamped)."""
    s = 0.8
    tm, _ = _tm(s)
    gen = torch.Generator().manual_seed(3)
    ranks = [torch.rand(tm.raw_weight(f).shape, generator=gen) for f in tm.groups]
    convs = _encoder_convs(tm)
    k0 = list(tm.groups).index(convs[0])
    ranks[k0] = ranks[k0] * 0.1  # the first conv's weights all rank at the bottom: clamped to the density floor
    scales = saliency_scales(tm, ranks, s)
    tm.set_layer_scales_(scales)
    init_thresholds_(tm, s, per_group=True)
    stats = {x.fqn: x for x in measure_layers(tm)}
    high, low = 1 - DENSITY_FLOOR * (1 - s), SPARSITY_FLOOR * s
    for k, fqn in enumerate(tm.groups):
        group = tm.groups[fqn]
        members = [j for j, f in enumerate(tm.groups) if tm.groups[f] == group]
        flat = torch.cat([ranks[j].flatten() for j in members])
        cut = flat.kthvalue(round(s * flat.numel())).values
        share = min(max(float((ranks[k] <= cut).float().mean()), low), high)
        got = stats[fqn].zeros / stats[fqn].params
        # the group threshold sits at the group's s-quantile of scaled magnitudes: each layer at its own share,
        # up to the clamping's effect on that quantile
        assert abs(got - share) <= 0.1, (fqn, got, share)
    assert stats[convs[0]].zeros / stats[convs[0]].params == pytest.approx(high, abs=0.1)
    # normalised per component: parameter-weighted geometric mean 1
    for group in tm.bank.groups:
        members = [f for f in tm.groups if tm.groups[f] == group]
        n = sum(tm.raw_weight(f).numel() for f in members)
        log_mean = sum(math.log(scales[f]) * tm.raw_weight(f).numel() for f in members) / n
        assert log_mean == pytest.approx(0.0, abs=1e-9)


def test_scales_follow_a_layer_rescaled_behind_its_normalisation() -> None:
    """Multiplying one layer's weights by 1000 multiplies its scale by 1000 and changes no layer's start share."""
    s = 0.9
    tm, _ = _tm(s)
    gen = torch.Generator().manual_seed(1)
    ranks = [torch.rand(tm.raw_weight(f).shape, generator=gen) for f in tm.groups]
    before = saliency_scales(tm, ranks, s)
    first = _encoder_convs(tm)[0]
    with torch.no_grad():
        tm.raw_weight(first).mul_(1000.0)
    after = saliency_scales(tm, ranks, s)
    group = [f for f in tm.groups if tm.groups[f] == tm.groups[first]]
    ratio = {f: after[f] / before[f] for f in group}
    assert ratio[first] / ratio[group[1]] == pytest.approx(1000.0, rel=1e-4)
    assert all(r == pytest.approx(ratio[group[1]], rel=1e-4) for f, r in ratio.items() if f != first)


def test_without_scales_a_small_scale_layer_is_emptied_and_with_them_it_is_not() -> None:
    """The collapse the scales exist for: one threshold per component empties a layer whose weights are small."""
    s = 0.7
    results = {}
    for mode in ("none", "saliency"):
        ctx = _context(s, 10)
        first = next(m for n, m in ctx.model.named_modules() if n.startswith("encoder") and hasattr(m, "weight"))
        with torch.no_grad():
            first.weight.mul_(1e-3)  # BatchNorm follows: the function barely changes, the magnitudes do
        pruner = build_pruner("adapmtl", MethodContext(**{**ctx.__dict__, "layer_scale": mode}))
        pruner.after_step_(10)  # the level controller at the final target
        stats = {x.fqn: x for x in pruner.measure()}
        conv = _encoder_convs(pruner.tm)[0]
        results[mode] = stats[conv].zeros / stats[conv].params
    assert results["none"] == 1.0
    assert results["saliency"] <= 1 - DENSITY_FLOOR * (1 - s) + 0.05


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_level_is_exact_with_scales(target: float) -> None:
    ctx = _context(target, 12)
    pruner = build_pruner("adapmtl", ctx)
    assert isinstance(pruner, ThresholdPruner) and pruner.tm.scaled
    achieved = _run(pruner, 12)
    stats = pruner.measure()
    total = sum(x.params for x in stats)
    assert abs(sum(x.zeros for x in stats) / total - target) <= 0.001
    assert abs(achieved - target) <= 0.001
    # every layer's reported threshold is its group's times its scale
    values = pruner.thresholds()
    for x in stats:
        assert x.threshold == pytest.approx(values[x.group] * float(pruner.tm.layer_scale(x.fqn)), rel=1e-5)


def test_fit_level_counts_what_the_forward_prunes_with_scales() -> None:
    tm, ctx = _tm(0.9)
    gen = torch.Generator().manual_seed(5)
    tm.set_layer_scales_({f: float(torch.rand((), generator=gen)) * 10 + 0.01 for f in tm.groups})
    init_thresholds_(tm, 0.9, per_group=True)
    fit = fit_level_(tm, 0.83)
    counted = sum(x.zeros for x in measure_layers(tm))
    assert abs(counted - fit.target_zeros) <= 2  # |w| <= t*m vs |w|/m <= t: one rounding apart at most
    assert abs(fit.zeros - counted) <= 2
    # and the forward really zeroes that many
    out = dict(tm.model.named_modules())
    zeros = sum(int((out[f].weight == 0).sum()) for f in tm.groups)
    assert zeros == counted
    del ctx


def test_layer_scale_is_refused_without_batches_or_unknown() -> None:
    ctx = _context(0.9, 10)
    with pytest.raises(ConfigError, match="needs training batches"):
        build_pruner("adapmtl", MethodContext(**{**ctx.__dict__, "calibration": None}))
    with pytest.raises(ConfigError, match="--layer-scale 'x' is not one of saliency, none"):
        build_pruner("adapmtl", MethodContext(**{**ctx.__dict__, "layer_scale": "x"}))


def test_scales_are_saved_with_the_state_and_restored() -> None:
    ctx = _context(0.9, 10)
    pruner = build_pruner("adapmtl", ctx)
    state = pruner.module.state_dict()
    keys = [k for k in state if k.endswith("parametrizations.weight.0.scale")]
    assert len(keys) == len(pruner.tm.groups)
    other = build_pruner("adapmtl", MethodContext(**{**_context(0.9, 10).__dict__, "layer_scale": "none"}))
    other.tm.scaled = True  # a resumed run is built with the same options; the values come from the state
    other.module.load_state_dict(state)
    for f in pruner.tm.groups:
        assert torch.equal(other.tm.layer_scale(f), pruner.tm.layer_scale(f))
    x, _ = _batch(4)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(pruner.module(x).values(), other.module(x).values(), strict=True))

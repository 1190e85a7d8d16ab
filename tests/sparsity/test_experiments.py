"""The dev-split experiment switches of issue #13 (off by default): each does what it says when switched on.

``thresholds.PRUNED_GRADIENT`` (straight-through gradient for pruned weights), ``allocation.SIGN_AWARE`` (the
marginal rule also moves when pruning lowers the average loss) and ``methods.base.START`` (``union``: each
component starts at DiSparse's union split). Their dev results: benchmarks/results/quality-dev-s7.md.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adapmtl_cli.methods.base as base
from adapmtl_cli.model.discover import discover_components
from adapmtl_cli.sparsity import allocation, thresholds
from adapmtl_cli.sparsity.allocation import MarginalAllocator
from adapmtl_cli.sparsity.thresholds import soft_threshold


def test_pruned_weights_get_a_share_of_their_gradient_only_when_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.tensor([0.05, -0.5, 0.8], requires_grad=True)
    t = torch.tensor(0.1)
    soft_threshold(w, t).sum().backward()
    assert w.grad is not None and w.grad.tolist() == [0.0, 1.0, 1.0]
    monkeypatch.setattr(thresholds, "PRUNED_GRADIENT", 0.25)
    w.grad = None
    soft_threshold(w, t).sum().backward()
    assert w.grad is not None and w.grad.tolist() == [0.25, 1.0, 1.0]


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8, bias=False)
        self.b = nn.Linear(8, 8, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"p": self.a(x), "q": self.b(x)}


def _thresholded() -> thresholds.ThresholdedModel:
    torch.manual_seed(0)
    model = _Two()
    out = model(torch.randn(2, 8))
    cmap = discover_components(model, out, ["p", "q"])
    tm = thresholds.inject_thresholds_(model, cmap)
    thresholds.init_thresholds_(tm, 0.5, per_group=True)
    return tm


def test_sign_aware_moves_the_split_when_pruning_lowers_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    tm = _thresholded()
    groups = tm.bank.groups
    for g, value in zip(groups, (-1.0, -3.0), strict=True):  # both negative: raising thresholds lowers the loss
        tm.bank.logit(g).grad = torch.tensor(value)
    mags = [torch.cat([tm.scaled_magnitudes(f).flatten() for f, gg in tm.groups.items() if gg == g]) for g in groups]
    assert MarginalAllocator(len(groups)).step_(tm, mags, steps=10).abs().sum() == 0
    monkeypatch.setattr(allocation, "SIGN_AWARE", True)
    moves = MarginalAllocator(len(groups)).step_(tm, mags, steps=10)
    # the group whose loss falls more per pruned weight prunes more (its threshold rises)
    assert moves[1] > 0 > moves[0]


def test_union_start_puts_each_component_at_the_union_split() -> None:
    tm = _thresholded()
    fqns = list(tm.groups)
    ranks = [torch.full((8, 8), 0.2), torch.full((8, 8), 0.9)]  # the first layer's weights all rank low
    target = {tm.groups[fqns[0]]: 0.9, tm.groups[fqns[1]]: 0.1}
    base._start_at_(tm, target)
    assert base._union_sparsities(tm, ranks, 0.5) == {tm.groups[fqns[0]]: 1.0, tm.groups[fqns[1]]: 0.0}
    for fqn in fqns:
        w, t = tm.raw_weight(fqn).detach().abs(), float(tm.soft_threshold(fqn).threshold().detach())
        assert abs(float((w <= t).float().mean()) - target[tm.groups[fqn]]) <= 2 / 64  # one tie of rounding

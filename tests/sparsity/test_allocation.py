"""The allocation rules: a component whose loss reacts far more to pruning must end denser (``marginal``)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adapmtl_cli as adapmtl
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.sparsity.allocation import MarginalAllocator


class TwinHeads(nn.Module):
    """A shared stem and two heads with identical weights: only the tasks' sensitivity tells them apart."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fragile = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 1))
        self.robust = copy.deepcopy(self.fragile)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.stem(x)
        return {"fragile": self.fragile(h), "robust": self.robust(h)}


@functools.cache  # each rule's run is shared by the tests that compare it
def _prune(allocation: str, steps: int = 60, settle: str = "thresholds") -> dict[str, float]:
    """The components' final sparsity; ``settle="thresholds"`` lets the rule move the split to the last step."""
    model = TwinHeads()
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(4, 3, 8, 8, generator=g) for _ in range(4)]
    with torch.no_grad():
        targets = [model(x) for x in xs]  # the dense model's own outputs: any pruning costs loss
    weight = {"fragile": 100.0, "robust": 0.01}
    pruning = adapmtl.prepare(
        model,
        xs[0],
        tasks=["fragile", "robust"],
        sparsity=0.7,
        steps=steps,
        layer_scale="none",
        weighting="equal",
        allocation=allocation,
        ramp_end=0.5,
        settle=settle,
    )
    opt = torch.optim.SGD(pruning.param_groups(lr=0.0, threshold_lr=0.002), lr=0.0)
    for step in range(steps):
        x, y = xs[step % 4], targets[step % 4]
        out = pruning.model(x)
        loss = pruning.weigh({t: weight[t] * F.mse_loss(out[t], y[t]) for t in weight})
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruning.step()
    comps = pruning.sparsity()["components"]
    assert abs(pruning.sparsity()["overall"] - 0.7) <= 0.001
    return comps


def test_marginal_keeps_the_sensitive_component_denser_by_a_clear_margin() -> None:
    frozen = _prune("frozen")
    marginal = _prune("marginal")
    assert abs(frozen["head:fragile"] - frozen["head:robust"]) < 0.01  # identical heads, identical split
    gap = marginal["head:robust"] - marginal["head:fragile"]
    assert gap > 0.2, marginal  # the fragile head keeps far more of its weights
    assert marginal["head:fragile"] < frozen["head:fragile"] - 0.1
    # The default fixes the mask where the ramp ends (half of this run): the split has moved less, but clearly.
    settled = _prune("marginal", settle="mask")
    assert 0.05 < settled["head:robust"] - settled["head:fragile"] < gap, settled


def test_the_size_of_the_sensitivity_reaches_the_split() -> None:
    marginal = _prune("marginal")
    adam = _prune("adam")
    gap_adam = adam["head:robust"] - adam["head:fragile"]
    gap_marginal = marginal["head:robust"] - marginal["head:fragile"]
    # Adam moves each logit by about its learning rate whatever the gradient's size: a far smaller gap.
    assert gap_marginal > 3 * max(gap_adam, 0.01), (adam, marginal)


def test_marginal_state_is_saved_with_the_model_and_resumes_exactly() -> None:
    model = TwinHeads()
    x = torch.rand(2, 3, 12, 12)
    pruning = adapmtl.prepare(model, x, tasks=["fragile", "robust"], layer_scale="none", allocation="marginal")
    keys = [k for k in pruning.model.state_dict() if k.startswith("allocator.")]
    assert keys == ["allocator.grad_ema", "allocator.density_ema", "allocator.updates"]
    assert isinstance(pruning.pruner.tm.allocator, MarginalAllocator)  # type: ignore[attr-defined]
    assert [g["lr"] for g in pruning.param_groups(lr=1e-4)] == [1e-4, 0.0]  # the logits move by the rule only


def test_allocation_is_refused_for_mask_methods_and_unknown_rules() -> None:
    x = torch.rand(2, 3, 12, 12)
    with pytest.raises(ConfigError, match="--allocation moves learned thresholds; --method gmp prunes with masks"):
        adapmtl.prepare(TwinHeads(), x, tasks=["fragile", "robust"], method="gmp", allocation="marginal")
    with pytest.raises(ConfigError, match="--allocation 'greedy' is not one of adam, marginal, frozen"):
        adapmtl.prepare(TwinHeads(), x, tasks=["fragile", "robust"], layer_scale="none", allocation="greedy")

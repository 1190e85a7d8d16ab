"""``tp_taylor`` ranks channels as Torch-Pruning's ``GroupTaylorImportance()`` and sums the score over the steps
between mask updates (methods/tp_taylor.py, sparsity/channel_gates.raw_weight_taylor)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from channel_models import Concat, Depthwise, Multitask, Residual
from torch import nn
from tp_reference import assert_same_order_as_torch_pruning

import adapmtl_cli as adapmtl
from adapmtl_cli.sparsity.channel_gates import raw_weight_taylor

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _loss(out: object) -> torch.Tensor:
    values = list(out.values()) if isinstance(out, dict) else [out]
    return sum((v.float() ** 2).mean() + v.float().mean() for v in values)  # type: ignore[return-value]


def _tasks(model: nn.Module) -> list[str]:
    out = model(X)
    return list(out) if isinstance(out, dict) else ["out"]


@pytest.mark.parametrize("factory", [Residual, Concat, Depthwise, Multitask])
def test_ranking_within_each_group_is_torch_prunings_group_taylor(factory: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    reference = copy.deepcopy(model)
    tasks = _tasks(model)
    pruning = adapmtl.prepare(model, X, tasks=tasks, outputs=tasks, method="tp_taylor", sparsity=0.5, steps=4)
    cm = pruning.pruner.cm  # type: ignore[attr-defined]
    _loss(pruning.model(X)).backward()  # every gate is 1: the raw weights get the plain model's gradients
    ours = raw_weight_taylor(cm)
    _loss(reference(X)).backward()
    assert_same_order_as_torch_pruning(reference, X, cm, ours, tp.importance.GroupTaylorImportance(), nonzero=True)


def test_the_score_sums_the_steps_since_the_last_update_and_is_part_of_the_state() -> None:
    torch.manual_seed(0)
    model = Multitask()
    tasks = _tasks(model)
    pruning = adapmtl.prepare(model, X, tasks=tasks, outputs=tasks, method="tp_taylor", sparsity=0.5, steps=100)
    pruner = pruning.pruner
    cm = pruner.cm  # type: ignore[attr-defined]
    assert pruner.update_every == 2  # type: ignore[attr-defined]
    opt = torch.optim.SGD(pruning.param_groups(0.0), lr=0.0)  # weights stay: each step sees the same gradient
    seen = []
    for _ in range(3):
        opt.zero_grad()
        out = pruning.model(X)
        pruning.weigh({t: (out[t] ** 2).mean() + out[t].mean() for t in tasks}).backward()
        opt.step()
        seen.append(raw_weight_taylor(cm))
        pruning.step()
        if len(seen) == 1:  # no update yet: the sum holds the first step's score
            torch.testing.assert_close(cm.taylor_sum, seen[0])
    # step 2 updated the masks and restarted the sum: it holds step 3 only (not the three steps' 3 × score)
    torch.testing.assert_close(cm.taylor_sum, seen[2])
    assert not torch.allclose(cm.taylor_sum, seen[0] + seen[1] + seen[2])
    assert "taylor_sum" in dict(cm.named_buffers())
    assert "taylor_sum" in pruning.state_dict()["model"]

"""Tied weights under every parametrization: pruned once (one value for all holders), counted once, baked tied.

Through the library API, for a threshold method and a mask method: the tied tensor gets one threshold (its
owner's group), the holders compute the same pruned weight, the zero counts count it once, and the baked model
shares one plain parameter again, with exact zeros matching the pruned view.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from real_models import TiedHeads
from torch import nn

import adapmtl_cli as adapmtl
from adapmtl_cli.model.discover import discover_components
from adapmtl_cli.sparsity.masks import bake_masks_, inject_masks_, keep_top_
from adapmtl_cli.sparsity.thresholds import bake_, init_thresholds_, inject_thresholds_, measure_layers

TASKS = ("segmentation", "depth", "normal")


def _images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 24, generator=torch.Generator().manual_seed(seed))


def _model() -> TiedHeads:
    torch.manual_seed(0)
    return TiedHeads()


def _tied(model: nn.Module) -> bool:
    return model.heads["normal"][0].weight is model.heads["depth"][0].weight


def test_thresholds_prune_the_tensor_once_and_bake_it_tied() -> None:
    model = _model()
    cmap = discover_components(model, model(_images()), TASKS)
    tm = inject_thresholds_(model, cmap)
    init_thresholds_(tm, 0.5, per_group=True)
    owner, alias = model.heads["depth"][0], model.heads["normal"][0]
    assert torch.equal(owner.weight, alias.weight)  # one pruned value for both holders
    assert int((owner.weight == 0).sum()) > 0
    layers = measure_layers(tm)
    assert [x.fqn for x in layers if x.fqn.startswith("heads.normal.0")] == []
    assert sum(x.params for x in layers) == cmap.prunable_params
    zeros = {x.fqn: x.zeros for x in layers}
    keys = list(_model().state_dict())
    baked = bake_(tm)
    assert _tied(baked) and type(baked.heads["normal"][0].weight) is nn.Parameter
    assert int((baked.heads["depth"][0].weight == 0).sum()) == zeros["heads.depth.0"]
    assert list(baked.state_dict()) == keys
    assert not any(hasattr(m, "parametrizations") for m in baked.modules())


def test_masks_share_one_mask_and_bake_tied() -> None:
    model = _model()
    cmap = discover_components(model, model(_images()), TASKS)
    mm = inject_masks_(model, cmap)
    assert set(mm.groups) == {layer.fqn for layer in cmap.layers}
    keep_top_(mm, {f: mm.raw_weight(f).abs() for f in mm.groups}, keep=cmap.prunable_params // 4)
    owner, alias = model.heads["depth"][0], model.heads["normal"][0]
    assert torch.equal(owner.weight, alias.weight)
    kept = int(mm.mask("heads.depth.0").sum())
    assert alias.parametrizations.weight[0] is owner.parametrizations.weight[0]  # one mask, not two
    baked = bake_masks_(mm)
    assert _tied(baked)
    assert int((baked.heads["normal"][0].weight != 0).sum()) == kept


@pytest.mark.parametrize("method", ["adapmtl", "gmp"])
def test_the_api_prunes_a_tied_model_to_the_target(method: str) -> None:
    model = _model()
    data = [(_images(4, seed), {}) for seed in range(4)]
    losses = {
        "segmentation": lambda p, y: p.square().mean(),
        "depth": lambda p, y: p.abs().mean(),
        "normal": lambda p, y: F.mse_loss(p, torch.zeros_like(p)),
    }
    scale = {"layer_scale": "none"} if method == "adapmtl" else {}
    pruning = adapmtl.prepare(model, data[0][0], tasks=list(TASKS), sparsity=0.8, steps=6, method=method, **scale)
    opt = torch.optim.Adam(pruning.param_groups(lr=1e-3))
    for step in range(6):
        out = pruning.model(data[step % 4][0])
        loss = pruning.weigh({t: losses[t](out[t], None) for t in TASKS})
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruning.step()
    pruned = pruning.finalize()
    assert _tied(pruned)
    total = pruning.report()["prunable_params"]
    assert total == sum(m.weight.numel() for m in pruned.modules() if isinstance(m, nn.Conv2d)) - 8 * 16 * 9
    zeros = sum(
        int((m.weight == 0).sum())
        for n, m in pruned.named_modules()
        if isinstance(m, nn.Conv2d) and n != "heads.normal.0"
    )
    assert zeros == pruning.report()["zeros"]
    assert abs(zeros / total - 0.8) <= 0.001

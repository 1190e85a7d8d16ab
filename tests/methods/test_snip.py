"""SNIP: one-shot masks from |w · ∂L/∂w| of the summed task loss on the calibration batches, fixed afterwards."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from method_samples import TASKS, Batch
from method_samples import sample_batch as _batch
from method_samples import task_losses as _losses
from tiny_models import HardShared
from torch import nn

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods import CALIBRATES, MethodContext, build_pruner, needs_calibration
from adapmtl_cli.methods.base import MaskPruner
from adapmtl_cli.methods.snip import Snip
from adapmtl_cli.model.discover import discover_components


def _tiny_context(sparsity: float, steps: int) -> MethodContext:
    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    out = model(_batch(0)[0])
    cmap = discover_components(model, {t: out[t] for t in TASKS}, list(TASKS))
    return MethodContext(
        model=model,
        cmap=cmap,
        sparsity=sparsity,
        steps=steps,
        ramp_end=0.75,
        calibration=lambda: iter([_batch(1), _batch(2)]),
        task_losses=_losses,
    )


class TwoHeads(nn.Module):
    """``h = W x``, ``a = A h``, ``b = B h``: every gradient of the summed loss ``a + b`` can be written down."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(2, 2, bias=False)
        self.head_a = nn.Linear(2, 1, bias=False)
        self.head_b = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.shared.weight.copy_(torch.tensor([[1.0, 0.1], [0.2, 2.0]]))
            self.head_a.weight.copy_(torch.tensor([[3.0, -1.0]]))
            self.head_b.weight.copy_(torch.tensor([[0.5, 0.1]]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.shared(x)
        return {"a": self.head_a(h), "b": self.head_b(h)}


def _two_heads_context(sparsity: float) -> MethodContext:
    model = TwoHeads()
    x = torch.ones(1, 2)
    cmap = discover_components(model, model(x), ["a", "b"])

    def losses(module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        out = module(batch[0])
        return {"a": out["a"].sum(), "b": out["b"].sum()}

    # Two batches whose inputs add up to x = (1, 1): the network is linear in x, so the summed loss's gradient is
    # the gradient at x = (1, 1).
    batches = [(torch.tensor([[1.0, 0.0]]), {}), (torch.tensor([[0.0, 1.0]]), {})]
    return MethodContext(
        model=model,
        cmap=cmap,
        sparsity=sparsity,
        steps=4,
        ramp_end=0.75,
        calibration=lambda: iter(batches),
        task_losses=losses,
    )


def _build(name: str, ctx: MethodContext) -> MaskPruner:
    pruner = build_pruner(name, ctx)
    assert isinstance(pruner, MaskPruner)
    return pruner


def _masks(pruner: MaskPruner) -> dict[str, list[list[bool]]]:
    return {f: pruner.mm.mask(f).tolist() for f in pruner.mm.groups}


def _train(pruner: MaskPruner, steps: int) -> float:
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    sparsity = 0.0
    for step in range(1, steps + 1):
        loss = sum(_losses(pruner.module, _batch(10 + step)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsity = pruner.after_step_(step)
    return sparsity


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_snip_lands_exactly_on_the_target_and_keeps_its_masks(sparsity: float) -> None:
    pruner = _build("snip", _tiny_context(sparsity, 4))
    assert isinstance(pruner, Snip)
    kept = sum(int(pruner.mm.mask(f).sum()) for f in pruner.mm.groups)
    total = sum(s.params for s in pruner.measure())
    assert kept == total - round(sparsity * total)
    before = _masks(pruner)
    assert abs(_train(pruner, 4) - sparsity) <= 0.001
    assert _masks(pruner) == before, "masks are fixed after the one-shot prune"
    assert pruner.target_at(0) == pruner.target_at(4) == sparsity


def test_snip_keeps_the_top_of_w_times_the_summed_loss_gradient() -> None:
    # Summed loss L = (A + B) W x at x = (1, 1): h = W x = (1.1, 2.2), dL/dA_j = dL/dB_j = h_j,
    # dL/dW_ij = (A_i + B_i) x_j = 3.5 (row 0), -0.9 (row 1). |w * g|:
    #   W: 3.5, 0.35, 0.18, 1.8   A: 3.3, 2.2   B: 0.55, 0.22
    # keep 4 of 8 (50%): W00, A0, A1, W11; keep 6 (25%): also B0, W01.
    half = _build("snip", _two_heads_context(0.5))
    assert _masks(half) == {
        "shared": [[True, False], [False, True]],
        "head_a": [[True, True]],
        "head_b": [[False, False]],
    }
    quarter = _build("snip", _two_heads_context(0.25))
    assert _masks(quarter) == {
        "shared": [[True, True], [False, True]],
        "head_a": [[True, True]],
        "head_b": [[True, False]],
    }


def test_snip_follows_the_sum_where_disparse_keeps_every_task() -> None:
    # Head b's loss reacts little: the summed loss's ranking empties it, DiSparse's per-task ranks do not.
    snip = _build("snip", _two_heads_context(0.5))
    disparse = _build("disparse", _two_heads_context(0.5))
    assert not any(_masks(snip)["head_b"][0])
    assert any(_masks(disparse)["head_b"][0])


def test_snip_asks_for_calibration_and_refuses_to_run_without_it() -> None:
    assert "snip" in CALIBRATES and needs_calibration("snip", None)
    with pytest.raises(ConfigError, match="snip"):
        build_pruner("snip", replace(_tiny_context(0.5, 4), calibration=None))

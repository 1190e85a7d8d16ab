"""LTH: IMP's rounds over the first half find the mask, the weights are rewound to the dense checkpoint, then
the ticket retrains; exact target at the end."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from method_samples import TASKS
from method_samples import sample_batch as _batch
from method_samples import task_losses as _losses
from tiny_models import HardShared

from adapmtl_cli.methods import CALIBRATES, MethodContext, build_pruner
from adapmtl_cli.methods.lth import LotteryTicket
from adapmtl_cli.methods.mask_rounds import MagnitudeRounds, round_sparsity
from adapmtl_cli.model.discover import discover_components


def _context(sparsity: float, steps: int) -> MethodContext:
    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    out = model(_batch(0)[0])
    cmap = discover_components(model, {t: out[t] for t in TASKS}, list(TASKS))
    return MethodContext(model=model, cmap=cmap, sparsity=sparsity, steps=steps, ramp_end=0.75)


def _train_step(pruner: MagnitudeRounds, opt: torch.optim.Optimizer, step: int) -> None:
    loss = sum(_losses(pruner.module, _batch(step)).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def _now(pruner: LotteryTicket, dense: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pruned model's state under the dense checkpoint's names (a masked weight's raw value is ``original``)."""
    state = pruner.mm.model.state_dict()
    raw = {k.replace("parametrizations.weight.original", "weight"): v for k, v in state.items()}
    return {k: raw[k] for k in dense}


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_lth_lands_exactly_on_the_target(sparsity: float) -> None:
    steps = 8
    pruner = build_pruner("lth", _context(sparsity, steps))
    assert isinstance(pruner, LotteryTicket)
    assert pruner.target_at(steps) == sparsity
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    for step in range(1, steps + 1):
        _train_step(pruner, opt, step)
        achieved = pruner.after_step_(step)
    assert abs(achieved - sparsity) <= 0.001
    assert pruner.kept() == pruner.total - round(sparsity * pruner.total)


def test_lth_rewinds_to_the_dense_weights_with_the_last_rounds_mask() -> None:
    steps, sparsity = 8, 0.9
    ctx = _context(sparsity, steps)
    dense = {k: v.detach().clone() for k, v in ctx.model.state_dict().items() if v.is_floating_point()}
    pruner = build_pruner("lth", ctx)
    assert isinstance(pruner, LotteryTicket) and "lth" not in CALIBRATES
    assert pruner.rewind_step == 4 and pruner.starts == [0, 1, 2, 4]  # IMP's rounds over the first half
    assert pruner.target_at(3) == round_sparsity(3, 4, sparsity) and pruner.target_at(4) == sparsity
    assert all(pruner.dense[n].device == t.device for n, t in pruner.mm.named_parameters())
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    for step in range(1, 4):
        _train_step(pruner, opt, step)
        pruner.after_step_(step)
    assert any(not torch.equal(v, dense[k]) for k, v in _now(pruner, dense).items()), "training moved the weights"

    _train_step(pruner, opt, 4)
    kept_before = {f: pruner.mm.mask(f).clone() for f in pruner.mm.groups}
    trained = {f: pruner.mm.raw_weight(f).detach().abs().clone() for f in pruner.mm.groups}
    pruner.after_step_(4)
    # the ticket: the last round's mask, from the magnitudes trained so far (not the dense ones), nested
    mask = {f: pruner.mm.mask(f).clone() for f in pruner.mm.groups}
    assert pruner.kept() == pruner.keep_at(4)
    kept_mags = torch.cat([trained[f][mask[f]] for f in mask])
    dropped_mags = torch.cat([trained[f][kept_before[f] & ~mask[f]] for f in mask])
    assert kept_mags.min() >= dropped_mags.max()
    # rewound: every parameter and BatchNorm statistic is the dense checkpoint's, so w * mask = w_dense * mask
    for k, v in _now(pruner, dense).items():
        assert torch.equal(v, dense[k]), k
    layers = dict(pruner.mm.model.named_modules())
    for f in pruner.mm.groups:
        assert torch.equal(layers[f].weight, dense[f"{f}.weight"] * mask[f]), f

    for step in range(5, steps + 1):
        _train_step(pruner, opt, step)
        pruner.after_step_(step)
        assert all(torch.equal(pruner.mm.mask(f), mask[f]) for f in mask), "the ticket's mask stays fixed"
    assert any(not torch.equal(v, dense[k]) for k, v in _now(pruner, dense).items()), "the ticket retrains"
    assert abs(pruner.sparsity_now() - sparsity) <= 0.001


def _run(steps: int, stop: int, state: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Build lth on the dense model, load ``state`` (module, optimizer, step) if given, train up to ``stop``."""
    pruner = build_pruner("lth", _context(0.9, steps))
    assert isinstance(pruner, LotteryTicket)
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    start = 1
    if state is not None:
        pruner.module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"] + 1
    for step in range(start, stop + 1):
        _train_step(pruner, opt, step)
        pruner.after_step_(step)
    saved = {"module": pruner.module.state_dict(), "optimizer": opt.state_dict(), "step": stop}
    return {k: v.clone() for k, v in pruner.module.state_dict().items()}, saved


def test_a_run_resumed_before_or_after_the_rewind_ends_the_same() -> None:
    steps = 8
    whole, _ = _run(steps, steps)
    for stop in (3, 6):  # the rewind is after step 4
        _, saved = _run(steps, stop)
        resumed, _ = _run(steps, steps, saved)
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), stop

"""DiSparse dynamic: the static DiSparse mask, then drop/regrow swaps of a cosine-decaying size, exact count."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from method_samples import TASKS
from method_samples import sample_batch as _batch
from method_samples import task_losses as _losses
from tiny_models import HardShared

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods import CALIBRATES, MethodContext, build_pruner, needs_calibration
from adapmtl_cli.methods.disparse_dynamic import DROP_FRACTION, UPDATES, DiSparseDynamic, update_fraction
from adapmtl_cli.methods.saliency import best_task_ranks
from adapmtl_cli.model.discover import discover_components


def _context(sparsity: float, steps: int, ramp_end: float = 0.75) -> MethodContext:
    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    out = model(_batch(0)[0])
    cmap = discover_components(model, {t: out[t] for t in TASKS}, list(TASKS))
    return MethodContext(
        model=model,
        cmap=cmap,
        sparsity=sparsity,
        steps=steps,
        ramp_end=ramp_end,
        calibration=lambda: iter([_batch(1), _batch(2)]),
        task_losses=_losses,
    )


def _masks(pruner: DiSparseDynamic) -> torch.Tensor:
    return torch.cat([pruner.mm.mask(f).flatten() for f in pruner.mm.groups])


def _saliency(pruner: DiSparseDynamic) -> list[torch.Tensor]:
    ctx, fqns = pruner.ctx, list(pruner.mm.groups)
    weights = [pruner.mm.raw_weight(f) for f in fqns]
    assert ctx.calibration is not None and ctx.task_losses is not None
    return best_task_ranks(pruner.mm, weights, fqns, pruner.mm.groups, ctx.cmap, ctx.calibration, ctx.task_losses)


def _train_step(pruner: DiSparseDynamic, opt: torch.optim.Optimizer, step: int) -> None:
    loss = sum(_losses(pruner.module, _batch(10 + step)).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_the_update_fraction_decays_on_a_cosine() -> None:
    assert update_fraction(0, 100) == DROP_FRACTION == 0.3
    assert math.isclose(update_fraction(50, 100), DROP_FRACTION / 2)
    assert update_fraction(100, 100) == update_fraction(150, 100) == 0.0
    assert update_fraction(20, 100) > update_fraction(40, 100) > update_fraction(80, 100) > 0.0
    assert "disparse_dynamic" in CALIBRATES and needs_calibration("disparse_dynamic", None)


def test_updates_stop_where_the_ramp_ends() -> None:
    pruner = build_pruner("disparse_dynamic", _context(0.9, 300))
    assert isinstance(pruner, DiSparseDynamic)
    assert (pruner.end, pruner.update_every) == (225, 225 // UPDATES)
    updates = [t for t in range(1, 301) if pruner.swap_count(t)]
    assert updates == [28 * k for k in range(1, 8)]  # 224 would swap round(f * keep) = 0 weights
    assert pruner.swap_count(28) == round(update_fraction(28, 225) * pruner.keep)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_every_update_swaps_weights_at_the_exact_count(sparsity: float) -> None:
    steps = 4  # updates after steps 1 and 2 (T_end = 3), then the mask is fixed
    pruner = build_pruner("disparse_dynamic", _context(sparsity, steps, ramp_end=0.75))
    assert isinstance(pruner, DiSparseDynamic)
    keep = pruner.total - round(sparsity * pruner.total)
    assert int(_masks(pruner).sum()) == keep  # the static DiSparse mask, at the target from the start
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    changed = 0
    for step in range(1, steps + 1):
        _train_step(pruner, opt, step)
        before = _masks(pruner).clone()
        n = pruner.swap_count(step)
        sparsity_now = pruner.after_step_(step)
        after = _masks(pruner)
        assert int(after.sum()) == keep, step
        dropped, grown = before & ~after, after & ~before
        assert int(dropped.sum()) == int(grown.sum()) <= n, step  # fewer only where too few weights can grow
        changed += int(grown.sum())
        if n == 0:
            assert abs(sparsity_now - sparsity) <= 0.001, step
    assert changed > 0, "the mask never changed"
    assert pruner.end == 3 and all(pruner.swap_count(t) == 0 for t in range(3, steps + 1))
    assert abs(pruner.after_step_(steps) - sparsity) <= 0.001
    # every regrown weight trained away from zero: no kept weight is exactly zero at the end
    assert all(not ((pruner.mm.raw_weight(f) == 0) & pruner.mm.mask(f)).any() for f in pruner.mm.groups)


def test_a_swap_drops_the_least_salient_and_grows_pruned_weights_only() -> None:
    pruner = build_pruner("disparse_dynamic", _context(0.8, 10))
    assert isinstance(pruner, DiSparseDynamic)
    buffers = {k: v.clone() for k, v in pruner.mm.named_buffers()}
    before = _masks(pruner).clone()
    weights = torch.cat([pruner.mm.raw_weight(f).detach().flatten() for f in pruner.mm.groups])
    rng = torch.get_rng_state()
    mode = pruner.mm.training
    saliency = torch.cat([r.flatten() for r in _saliency(pruner)])
    assert pruner.swap_(25) == 25
    after = _masks(pruner)
    dropped, grown = before & ~after, after & ~before
    assert int(dropped.sum()) == int(grown.sum()) == 25
    # the dropped are the least salient of the kept (per-task ranks, best over tasks)
    assert saliency[dropped].max() <= saliency[before & after].min()
    # regrown weights come from the pruned ones and start at zero (RigL); every other weight is untouched
    now = torch.cat([pruner.mm.raw_weight(f).detach().flatten() for f in pruner.mm.groups])
    assert torch.equal(now, torch.where(grown, 0.0, weights))
    assert torch.equal(torch.get_rng_state(), rng) and pruner.mm.training == mode
    for k, v in pruner.mm.named_buffers():
        if not k.endswith("mask"):
            assert torch.equal(v, buffers[k]), k


def test_disparse_dynamic_refuses_to_run_without_calibration_batches() -> None:
    with pytest.raises(ConfigError, match="disparse_dynamic"):
        build_pruner("disparse_dynamic", replace(_context(0.5, 4), calibration=None))

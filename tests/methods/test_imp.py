"""IMP: K global-magnitude prune/retrain rounds inside the step budget, nested masks, exact target at the end."""

from __future__ import annotations

import pytest
import torch
from method_samples import TASKS
from method_samples import sample_batch as _batch
from method_samples import task_losses as _losses
from tiny_models import HardShared

from adapmtl_cli.methods import CALIBRATES, MethodContext, build_pruner, needs_calibration
from adapmtl_cli.methods.imp import last_round_start
from adapmtl_cli.methods.mask_rounds import ROUNDS, MagnitudeRounds, round_sparsity, round_starts
from adapmtl_cli.model.discover import discover_components


def _context(sparsity: float, steps: int, ramp_end: float = 0.75) -> MethodContext:
    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    out = model(_batch(0)[0])
    cmap = discover_components(model, {t: out[t] for t in TASKS}, list(TASKS))
    return MethodContext(model=model, cmap=cmap, sparsity=sparsity, steps=steps, ramp_end=ramp_end)


def _masks(pruner: MagnitudeRounds) -> torch.Tensor:
    return torch.cat([pruner.mm.mask(f).flatten() for f in pruner.mm.groups])


def _magnitudes(pruner: MagnitudeRounds) -> torch.Tensor:
    return torch.cat([pruner.mm.raw_weight(f).detach().abs().flatten() for f in pruner.mm.groups])


def _step(pruner: MagnitudeRounds, opt: torch.optim.Optimizer, step: int) -> float:
    loss = sum(_losses(pruner.module, _batch(step)).values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return pruner.after_step_(step)


def test_the_round_schedule() -> None:
    assert ROUNDS == 4
    # rounds evenly spaced from step 0 to the ramp's end: 75 retraining steps each at the default budget
    assert last_round_start(300, 0.75) == 225
    assert round_starts(225, 4) == [0, 75, 150, 225]
    # the last round always keeps retraining steps, also with --ramp-end 1
    assert last_round_start(300, 1.0) == 225
    assert last_round_start(100, 0.5) == 50
    assert last_round_start(1, 0.75) == 0
    assert round_starts(0, 4) == [0, 0, 0, 0]
    # s_k = 1 - (1 - s)^(k/K): the same fraction of the survivors each round, the last exactly the target
    s = 0.9
    assert [round(round_sparsity(k, 4, s), 6) for k in (1, 2, 3)] == [
        round(1 - 0.1**0.25, 6),
        round(1 - 0.1**0.5, 6),
        round(1 - 0.1**0.75, 6),
    ]
    assert round_sparsity(4, 4, s) == s
    assert not needs_calibration("imp", None) and "imp" not in CALIBRATES


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_imp_lands_exactly_on_the_target(sparsity: float) -> None:
    steps = 8
    pruner = build_pruner("imp", _context(sparsity, steps))
    assert isinstance(pruner, MagnitudeRounds)
    assert pruner.target_at(steps) == sparsity
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    for step in range(1, steps + 1):
        achieved = _step(pruner, opt, step)
    assert abs(achieved - sparsity) <= 0.001
    assert pruner.kept() == pruner.total - round(sparsity * pruner.total)


def test_imp_rounds_prune_by_magnitude_into_nested_masks() -> None:
    steps, sparsity = 20, 0.9
    pruner = build_pruner("imp", _context(sparsity, steps))
    assert isinstance(pruner, MagnitudeRounds)
    assert pruner.starts == [0, 5, 10, 15]  # last round at the ramp's end (15 of 20), 5 retraining steps left
    assert [pruner.target_at(t) for t in (0, 4, 5, 9, 10, 14, 15, 20)] == [
        round_sparsity(k, 4, sparsity) for k in (1, 1, 2, 2, 3, 3, 4, 4)
    ]
    # round 1 prunes the dense model by global magnitude before step 1
    assert pruner.kept() == pruner.keep_at(0)
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    masks = [_masks(pruner).clone()]
    for step in range(1, steps + 1):
        before = _masks(pruner).clone()
        opt.zero_grad()
        loss = sum(_losses(pruner.module, _batch(step)).values())
        loss.backward()
        opt.step()
        magnitudes = _magnitudes(pruner)
        pruner.after_step_(step)
        after = _masks(pruner)
        assert int(after.sum()) == pruner.keep_at(step), step
        if step in pruner.starts:
            masks.append(after.clone())
            # the survivors are the largest |w| among the weights kept before the round
            dropped = before & ~after
            assert magnitudes[after].min() >= magnitudes[dropped].max()
        else:
            assert torch.equal(after, before), f"the mask changed between rounds (step {step})"
    assert len(masks) == ROUNDS
    for earlier, later in zip(masks, masks[1:], strict=False):
        assert not (later & ~earlier).any(), "a weight pruned in one round came back in a later one"
        assert int(later.sum()) < int(earlier.sum())
    assert abs(pruner.sparsity_now() - sparsity) <= 0.001


def test_finalizing_early_still_lands_on_the_target() -> None:
    pruner = build_pruner("imp", _context(0.8, 100))
    assert isinstance(pruner, MagnitudeRounds)
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    _step(pruner, opt, 1)
    assert pruner.kept() == pruner.keep_at(0)
    assert abs(pruner.after_step_(100) - 0.8) <= 0.001  # what Pruning.finalize calls before baking

"""``adapmtl_paper``: one common start, growth by coupled decay, the target as a ceiling, an exact final landing."""

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
from adapmtl_cli.methods import DEFAULT_WEIGHTING, MethodContext, build_pruner
from adapmtl_cli.methods.adapmtl_paper import BETAS, THRESHOLD_DECAY, WEIGHT_DECAY, PaperPruner
from adapmtl_cli.model.discover import discover_components
from adapmtl_cli.train.loop import adam


def _context(sparsity: float, steps: int) -> MethodContext:
    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    out = model(_batch(0)[0])
    cmap = discover_components(model, {t: out[t] for t in TASKS}, list(TASKS))
    return MethodContext(model=model, cmap=cmap, sparsity=sparsity, steps=steps, ramp_end=0.75)


def _train(pruner: PaperPruner, steps: int, lr: float = 1e-3) -> list[float]:
    opt = adam(pruner.param_groups(lr, threshold_lr=123.0))
    out = []
    for step in range(1, steps + 1):
        loss = sum(_losses(pruner.module, _batch(step)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(pruner.after_step_(step))
    return out


def test_every_component_starts_at_one_common_threshold_near_dense() -> None:
    pruner = build_pruner("adapmtl_paper", _context(0.8, 20))
    assert isinstance(pruner, PaperPruner)
    values = set(pruner.thresholds().values())
    assert len(values) == 1 and len(pruner.thresholds()) == 3  # backbone + two heads, one value
    assert pruner.after_step_(0) < 0.01  # the start prunes about 0.1% of the weights
    assert DEFAULT_WEIGHTING["adapmtl_paper"] == "paper"


def test_the_optimizer_groups_are_the_papers_and_the_rate_comes_from_the_budget() -> None:
    pruner = build_pruner("adapmtl_paper", _context(0.8, 40))
    assert isinstance(pruner, PaperPruner)
    weights, thresholds = pruner.param_groups(1e-3, threshold_lr=123.0)
    assert weights["weight_decay"] == WEIGHT_DECAY and weights["betas"] == BETAS == (0.5, 0.999)
    assert thresholds["weight_decay"] == THRESHOLD_DECAY and thresholds["betas"] == BETAS
    # --threshold-lr is not used: growth at the rate reaches the target's common logit at the ramp's end (30)
    assert thresholds["lr"] == pytest.approx((pruner.goal_logit - pruner.start_logit) / 30)
    assert pruner.goal_logit > pruner.start_logit


def test_thresholds_grow_by_decay_and_the_run_lands_exactly_on_the_target() -> None:
    pruner = build_pruner("adapmtl_paper", _context(0.8, 40))
    assert isinstance(pruner, PaperPruner)
    start = pruner.thresholds()
    sparsity = _train(pruner, 40)
    mid = sparsity[20]
    assert 0.05 < mid  # the thresholds grew without any level controller
    assert all(v > start[g] for g, v in pruner.thresholds().items())
    zeros = sum(layer.zeros for layer in pruner.measure())
    total = sum(layer.params for layer in pruner.measure())
    assert sparsity[-1] == pytest.approx(0.8, abs=1e-3) and zeros / total == pytest.approx(0.8, abs=1e-3)


def test_at_the_ceiling_the_thresholds_get_no_gradient_so_adam_skips_them() -> None:
    pruner = build_pruner("adapmtl_paper", _context(0.5, 40))
    assert isinstance(pruner, PaperPruner)
    pruner.at_ceiling = True
    loss = sum(_losses(pruner.module, _batch(1)).values())
    loss.backward()
    assert all(p.grad is None for p in pruner.tm.bank.parameters())
    assert any(p.grad is not None for p in pruner.tm.parameters() if p.dim() > 1)
    pruner.tm.zero_grad(set_to_none=True)
    pruner.at_ceiling = False
    sum(_losses(pruner.module, _batch(1)).values()).backward()
    assert all(p.grad is not None and math.isfinite(float(p.grad)) for p in pruner.tm.bank.parameters())


def test_a_fresh_process_measures_the_ceiling_at_its_first_backward() -> None:
    pruner = build_pruner("adapmtl_paper", _context(0.0005, 40))  # the start already prunes about 0.1%
    assert isinstance(pruner, PaperPruner)
    assert pruner.at_ceiling is None
    sum(_losses(pruner.module, _batch(1)).values()).backward()
    assert pruner.at_ceiling is True
    assert all(p.grad is None for p in pruner.tm.bank.parameters())


def test_other_allocations_are_refused() -> None:
    with pytest.raises(ConfigError, match="adapmtl_paper"):
        build_pruner("adapmtl_paper", replace(_context(0.8, 10), allocation="marginal"))

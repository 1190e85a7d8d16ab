"""``tp_magnitude`` ranks channels as Torch-Pruning's ``GroupMagnitudeImportance(p=2)`` and removes the same
fraction of every group (methods/tp_magnitude.py, methods/channel_pruner.uniform_keep)."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from channel_models import Concat, Depthwise, Multitask, Residual
from torch import nn
from tp_reference import assert_same_order_as_torch_pruning

import adapmtl_cli as adapmtl
from adapmtl_cli.methods.channel_pruner import uniform_keep
from adapmtl_cli.sparsity.channel_gates import raw_weight_squares

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _perturbed(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 2.0)
    return model


@pytest.mark.parametrize("factory", [Residual, Concat, Depthwise, Multitask])
def test_ranking_within_each_group_is_torch_prunings_group_magnitude(factory: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = _perturbed(factory())
    out = model(X)
    tasks = list(out) if isinstance(out, dict) else ["out"]
    pruning = adapmtl.prepare(model, X, tasks=tasks, outputs=tasks, method="tp_magnitude", sparsity=0.5, steps=4)
    cm = pruning.pruner.cm  # type: ignore[attr-defined]
    ours = raw_weight_squares(cm, biases=False)
    assert_same_order_as_torch_pruning(model, X, cm, ours, tp.importance.GroupMagnitudeImportance(p=2))


def test_uniform_keep_removes_the_same_fraction_everywhere_and_exactly_in_total() -> None:
    scores = [torch.arange(n, dtype=torch.float32) for n in (3, 8, 5, 16)]
    masks = uniform_keep(scores, 0.5)
    removed = [int((m == 0).sum()) for m in masks]
    assert sum(removed) == round(0.5 * 32)
    assert all(abs(r - 0.5 * n) < 1 for r, n in zip(removed, (3, 8, 5, 16), strict=True))
    for m in masks:  # the lowest scores go first
        assert bool((m[: int((m == 0).sum())] == 0).all())
    assert all(int(m.sum()) >= 1 for m in uniform_keep(scores, 0.99))


def test_uniform_keep_with_a_multiple_keeps_multiples_in_wide_groups_and_the_closest_total() -> None:
    sizes = (3, 8, 5, 16, 64, 32)
    scores = [torch.arange(n, dtype=torch.float32) for n in sizes]
    for fraction in (0.3, 0.5, 0.7):
        masks = uniform_keep(scores, fraction, 4)
        kept = [int(m.sum()) for m in masks]
        assert all(k % 4 == 0 or k == n for k, n in zip(kept, sizes, strict=True) if n >= 8)
        assert all(k >= 1 for k in kept) and sum(sizes) - sum(kept) == round(fraction * sum(sizes))
        assert all(abs((n - k) - fraction * n) <= 4 for k, n in zip(kept, sizes, strict=True))
        for m in masks:  # the lowest scores go first
            assert bool((m[: int((m == 0).sum())] == 0).all())
    # no group may go below one chunk: the closest reachable total, not the exact one
    kept = [int(m.sum()) for m in uniform_keep(scores, 0.99, 4)]
    assert kept == [1, 4, 1, 4, 4, 4]
    wide = [torch.arange(16, dtype=torch.float32)] * 2  # only multiples of 4: 30% of 32 -> 8 or 12 removed, not 10
    assert sum(16 - int(m.sum()) for m in uniform_keep(wide, 0.3, 4)) in (8, 12)
    # channels removed already stay removed even where the closest count for the fraction is smaller
    floor = [0, 4, 0, 12, 0, 0]
    kept = [int(m.sum()) for m in uniform_keep(scores, 0.3, 4, floor)]
    assert all(n - k >= f for k, n, f in zip(kept, sizes, floor, strict=True)) and kept[3] == 4


def test_uniform_keep_with_a_multiple_spreads_the_rounding_over_the_groups_along_the_ramp() -> None:
    # The ASPP reference model's channel groups: with 24 equal groups the rounding moves used to pile onto the
    # first groups (a 48-channel group lost 44 at 50% while the others lost half), and the floors kept it there.
    sizes = (16, 8, 48, 8, 48, 16, 96, 24, 144, 32, 192, 56, 336, 112, 64, *(128,) * 24)
    removed = [0] * len(sizes)
    for fraction in (0.05, 0.175, 0.3, 0.39, 0.45, 0.48, 0.5):  # a cubic ramp's steps
        scores = [torch.rand(n) for n in sizes]
        masks = uniform_keep(scores, fraction, 4, removed)
        removed = [int((m == 0).sum()) for m in masks]
        assert abs(sum(removed) - round(fraction * sum(sizes))) <= 2  # every count moves by 4: the closest total
        # every group near its own share: within one move of 4 channels, or 5% of a wide group
        assert all(abs(r - fraction * n) <= max(4, 0.05 * n) for r, n in zip(removed, sizes, strict=True)), removed
    assert removed == [n // 2 for n in sizes]  # the same counts at the end as without rounding

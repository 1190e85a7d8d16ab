"""Sparsity schedule (cubic ramp, property-tested) and the level controller that makes the zero count exact."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adapmtl_cli.discover import Component, ComponentMap, Layer
from adapmtl_cli.schedule import cubic_target, fit_level_
from adapmtl_cli.thresholds import ThresholdedModel, init_thresholds_, inject_thresholds_, measure_layers

# --- cubic_target --------------------------------------------------------------------------------

schedules = st.tuples(
    st.integers(1, 5000),
    st.floats(0.01, 0.999),
    st.floats(0.0, 1.0),
    st.floats(0.01, 1.0),
).map(lambda s: (s[0], s[1], s[1] * s[2], s[3]))  # (total, final, initial <= final, ramp_end)


@settings(max_examples=200, deadline=None)
@given(schedules, st.integers(0, 5000), st.integers(0, 5000))
def test_cubic_target_is_monotone_and_bounded(schedule: tuple[int, float, float, float], a: int, b: int) -> None:
    total, final, initial, ramp_end = schedule
    lo, hi = sorted((a % (total + 1), b % (total + 1)))
    t_lo = cubic_target(lo, total, final, initial, ramp_end)
    t_hi = cubic_target(hi, total, final, initial, ramp_end)
    assert initial - 1e-12 <= t_lo <= t_hi <= final  # final + (initial - final) may round 1 ulp below initial


@settings(max_examples=200, deadline=None)
@given(schedules, st.integers(0, 10_000))
def test_cubic_target_endpoints(schedule: tuple[int, float, float, float], extra: int) -> None:
    total, final, initial, ramp_end = schedule
    assert math.isclose(cubic_target(0, total, final, initial, ramp_end), initial, abs_tol=1e-12)
    held_from = math.ceil(total * ramp_end)
    assert cubic_target(held_from + extra, total, final, initial, ramp_end) == final
    assert cubic_target(total, total, final, initial, ramp_end) == final


def test_cubic_target_known_values() -> None:
    assert cubic_target(0, 100, 0.9) == 0.0
    assert cubic_target(75, 100, 0.9) == 0.9
    assert cubic_target(50, 100, 0.8, 0.2, ramp_end=1.0) == pytest.approx(0.8 - 0.6 * 0.5**3)
    # Most of the pruning happens early: half-way through the ramp, 7/8 of the way to the target.
    assert cubic_target(30, 80, 0.8, ramp_end=0.75) == pytest.approx(0.8 * 7 / 8)


# --- fit_level_ ----------------------------------------------------------------------------------


class _Lopsided(nn.Module):
    """One big conv (9408 weights) and two tiny heads (64 and 192 weights): components 147x apart."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Conv2d(3, 64, 7, bias=False)
        self.depth = nn.Conv2d(64, 1, 1)
        self.normal = nn.Conv2d(64, 3, 1)


def _lopsided() -> ThresholdedModel:
    torch.manual_seed(0)
    model = _Lopsided()
    layers = (
        Layer("big", "backbone", 9408, "Conv2d"),
        Layer("depth", "head:depth", 64, "Conv2d"),
        Layer("normal", "head:normal", 192, "Conv2d"),
    )
    components = tuple(
        Component(layer.component, layer.component.partition(":")[0], (), (layer.fqn,), layer.params, layer.params, "")
        for layer in layers
    )
    cmap = ComponentMap(("depth", "normal"), components, layers, unreached=(), excluded=())
    tm = inject_thresholds_(model, cmap)
    init_thresholds_(tm, 0.3)
    with torch.no_grad():
        tm.bank.logit("backbone").add_(1.0)
        tm.bank.logit("head:depth").sub_(1.5)
    return tm


def _zeros(tm: ThresholdedModel) -> int:
    return sum(m.zeros for m in measure_layers(tm))


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_fit_level_hits_the_target(target: float) -> None:
    tm = _lopsided()
    total = 9408 + 64 + 192
    before = tm.bank.logits()
    fit = fit_level_(tm, target)
    after = tm.bank.logits()
    zeros = _zeros(tm)
    assert abs(zeros / total - target) <= 0.001
    assert (fit.zeros, fit.total, fit.target_zeros) == (zeros, total, round(target * total))
    assert fit.sparsity == zeros / total
    # One common offset: the learned differences between groups survive.
    shifts = [after[g] - before[g] for g in before]
    assert max(shifts) - min(shifts) < 1e-5
    assert shifts[0] == pytest.approx(fit.delta, abs=1e-5)
    assert after["backbone"] - after["head:depth"] == pytest.approx(before["backbone"] - before["head:depth"], abs=1e-5)


def test_fit_level_keeps_groups_apart() -> None:
    tm = _lopsided()
    fit_level_(tm, 0.9)
    per_group = {m.group: m.zeros / m.params for m in measure_layers(tm)}
    assert per_group["backbone"] > per_group["head:normal"] > per_group["head:depth"]


def test_fit_level_twice_changes_nothing() -> None:
    tm = _lopsided()
    fit_level_(tm, 0.9)
    zeros, logits = _zeros(tm), tm.bank.logits()
    again = fit_level_(tm, 0.9)
    assert _zeros(tm) == zeros == again.zeros
    assert tm.bank.logits() == pytest.approx(logits, abs=1e-5)


def test_fit_level_moves_down_as_well_as_up() -> None:
    tm = _lopsided()
    fit_level_(tm, 0.9)
    fit = fit_level_(tm, 0.5)
    assert fit.delta < 0
    assert abs(_zeros(tm) / fit.total - 0.5) <= 0.001

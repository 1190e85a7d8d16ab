"""Sparsity schedule (cubic ramp, property-tested) and the level controller that makes the zero count exact."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.model.discover import Component, ComponentMap, Layer
from adapmtl_cli.sparsity import schedule
from adapmtl_cli.sparsity.schedule import LevelController, LevelFit, check_bounds, cubic_target, fit_level_
from adapmtl_cli.sparsity.thresholds import ThresholdedModel, init_thresholds_, inject_thresholds_, measure_layers

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


# --- the exact counter against a full sort -------------------------------------------------------


def _reference_fit(tm: ThresholdedModel, target: float, iters: int = 60) -> tuple[float, int]:
    """The controller as first written: bisection on counts from fully sorted magnitudes (slow, obviously exact)."""
    mags = [
        torch.sort(torch.cat([tm.raw_weight(f).detach().abs().flatten() for f, g in tm.groups.items() if g == grp]))
        for grp in tm.bank.groups
    ]
    mags = [m.values for m in mags]
    logits = torch.stack([tm.bank.logit(g).detach().float() for g in tm.bank.groups])

    def count(delta: float) -> int:
        t = torch.sigmoid((logits + delta).float())
        return sum(int(torch.searchsorted(m, t[i : i + 1], right=True)) for i, m in enumerate(mags))

    total = sum(m.numel() for m in mags)
    want = int(round(target * total))
    if count(0.0) == want:
        return 0.0, want
    lo, hi = -40.0, 40.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) < want else (lo, mid)
    c_lo, c_hi = count(lo), count(hi)
    return (lo, c_lo) if abs(c_lo - want) < abs(c_hi - want) else (hi, c_hi)


def _random_groups(seed: int, sizes: tuple[int, ...]) -> ThresholdedModel:
    """One conv per group with weights of very different scales, logits spread around their quantiles."""
    torch.manual_seed(seed)
    model = nn.Module()
    layers = []
    for i, n in enumerate(sizes):
        conv = nn.Conv2d(n, 1, 1, bias=False)
        with torch.no_grad():
            conv.weight.mul_(10.0 ** (i - 1))
            conv.weight[0, : n // 10].zero_()  # exact zeros (ties at |w| = 0) count as pruned at any threshold
        model.add_module(f"c{i}", conv)
        layers.append(Layer(f"c{i}", f"head:t{i}", n, "Conv2d"))
    components = tuple(Component(x.component, "head", (), (x.fqn,), x.params, x.params, "") for x in layers)
    tm = inject_thresholds_(
        model, ComponentMap(tuple(f"t{i}" for i in range(len(sizes))), components, tuple(layers), (), ())
    )
    init_thresholds_(tm, 0.5, per_group=True)
    with torch.no_grad():
        for i, g in enumerate(tm.bank.groups):
            tm.bank.logit(g).add_(0.7 * i - 1.0)
    return tm


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10_000),
    st.lists(st.integers(1, 3000), min_size=1, max_size=4).map(tuple),
    st.floats(0.0, 1.0),
)
def test_fit_level_equals_the_full_sort_bisection(seed: int, sizes: tuple[int, ...], target: float) -> None:
    delta, zeros = _reference_fit(_random_groups(seed, sizes), target)
    # 32 samples: these small models take the bracket-and-band path that large ones take
    for sample in (schedule._SAMPLE, 32):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(schedule, "_SAMPLE", sample)
            tm = _random_groups(seed, sizes)
            fit = fit_level_(tm, target)
        assert (fit.delta, fit.zeros) == (delta, zeros)
        assert fit.zeros == _zeros(tm)


@pytest.mark.parametrize("wrong", [2, 10])
@pytest.mark.parametrize("target", [0.0, 0.37, 0.9, 1.0])
def test_a_wrong_bracket_is_never_trusted(monkeypatch: pytest.MonkeyPatch, target: float, wrong: int) -> None:
    """Brackets that miss the target are rejected: widened (2 wrong guesses) or all weights counted (10)."""
    monkeypatch.setattr(schedule, "_SAMPLE", 256)  # a bracket even for this small model
    tm, reference = _random_groups(7, (5000, 300, 40)), _random_groups(7, (5000, 300, 40))
    guesses: list[tuple[float | None, float | None]] = []
    tried: list[tuple[float | None, float | None]] = []
    approximate, try_band = schedule._ZeroCounter._approximate, schedule._ZeroCounter._try_band

    def guess(self: schedule._ZeroCounter, margin: int) -> tuple[float | None, float | None]:
        guesses.append(approximate(self, margin))
        return (40.0, 40.0) if len(guesses) <= wrong else guesses[-1]

    def spy(self: schedule._ZeroCounter, lo: float | None, hi: float | None) -> bool:
        tried.append((lo, hi))
        return try_band(self, lo, hi)

    monkeypatch.setattr(schedule._ZeroCounter, "_approximate", guess)
    monkeypatch.setattr(schedule._ZeroCounter, "_try_band", spy)
    fit = fit_level_(tm, target)
    assert (fit.delta, fit.zeros) == _reference_fit(reference, target)
    assert tried[: min(wrong, 4)] == [(40.0, 40.0)] * min(wrong, 4)
    assert len(tried) == (3 if wrong == 2 else 5)
    if wrong == 10:
        assert tried[-1] == (None, None)


def test_controller_keeps_no_state_between_steps() -> None:
    """Resuming builds a fresh controller: it must decide exactly as the one that ran all along."""
    tm = _lopsided()
    controller = LevelController(tm)
    for step, target in enumerate([0.2, 0.5, 0.7]):
        controller.step_(step, target)
    with torch.no_grad():
        tm.model.big.parametrizations.weight.original.mul_(1.01)
    other = copy.deepcopy(tm)
    assert controller.step_(3, 0.8) == LevelController(other).step_(3, 0.8)
    assert tm.bank.logits() == other.bank.logits()


def test_fit_level_reads_channels_last_weights() -> None:
    tm = _lopsided()
    other = copy.deepcopy(tm).to(memory_format=torch.channels_last)
    assert not other.raw_weight("big").is_contiguous()
    assert fit_level_(tm, 0.9) == fit_level_(other, 0.9)


# --- floors and caps (--component-sparsity) ---------------------------------------------------------------


def _group_sparsity(tm: ThresholdedModel) -> dict[str, float]:
    layers = measure_layers(tm)
    return {layer.group: layer.zeros / layer.params for layer in layers}


def test_a_cap_holds_and_the_rest_absorbs_the_difference() -> None:
    tm = _lopsided()
    free = fit_level_(_lopsided(), 0.5)
    assert _group_sparsity(_lopsided_after(free))["head:normal"] > 0.14  # without the cap it goes past it
    fit = fit_level_(tm, 0.5, bounds={"head:normal": (0.0, 0.1)})
    sparsity = _group_sparsity(tm)
    assert sparsity["head:normal"] == pytest.approx(0.1, abs=1 / 192)
    assert fit.zeros == round(0.5 * (9408 + 64 + 192))  # still exactly on the target overall
    assert sparsity["backbone"] > 0.5


def _lopsided_after(fit: LevelFit) -> ThresholdedModel:
    tm = _lopsided()
    with torch.no_grad():
        for g in tm.bank.groups:
            tm.bank.logit(g).add_(fit.delta)
    return tm


def test_a_floor_holds() -> None:
    tm = _lopsided()
    fit_level_(tm, 0.3, bounds={"head:depth": (0.9, 1.0)})
    sparsity = _group_sparsity(tm)
    assert sparsity["head:depth"] == pytest.approx(0.9, abs=1 / 64)
    assert sum(m.zeros for m in measure_layers(tm)) == round(0.3 * (9408 + 64 + 192))


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"neck": (0.0, 0.5)}, "not a component"),
        ({"backbone": (0.8, 0.5)}, "MIN <= MAX"),
        ({"backbone": (0.0, 0.1), "head:depth": (0.0, 0.1), "head:normal": (0.0, 0.1)}, "between 0.0000 and 0.1000"),
    ],
)
def test_impossible_bounds_are_refused(bounds: dict[str, tuple[float, float]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_bounds(bounds, {"backbone": 9408, "head:depth": 64, "head:normal": 192}, 0.5)

"""Task weights: equal, and AdapMTL's adaptive weights (warm-up, window, normalisation, state round trip)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapmtl_cli.methods.weighting import AdaptiveWeighting, EqualWeighting, PaperWeighting, make_weighting

TASKS = ["segmentation", "depth", "normal"]


def _losses(step: int) -> dict[str, float]:
    """Segmentation swings by 50%, depth by 5%, normal not at all."""
    sign = (-1) ** step
    return {"segmentation": 2.0 * (1 + 0.5 * sign), "depth": 0.3 * (1 + 0.05 * sign), "normal": 0.8}


def _run(weighting: PaperWeighting, steps: range) -> list[dict[str, float]]:
    out = []
    for step in steps:
        weighting.update(step, _losses(step))
        out.append(weighting.weights())
    return out


def test_equal_weighting() -> None:
    weighting = make_weighting("equal", TASKS, 100)
    assert isinstance(weighting, EqualWeighting)
    for step in range(5):
        weighting.update(step, _losses(step))
    assert weighting.weights() == {"segmentation": 1.0, "depth": 1.0, "normal": 1.0}
    assert weighting.state_dict() == {}


def test_make_weighting() -> None:
    assert isinstance(make_weighting("adaptive", TASKS, 400), AdaptiveWeighting)
    weighting = make_weighting("paper", TASKS, 400)
    assert isinstance(weighting, PaperWeighting)
    assert (weighting.warmup_steps, weighting.window) == (100, 10)
    with pytest.raises(ValueError, match="'uncertainty'"):
        make_weighting("uncertainty", TASKS, 100)


def test_ones_during_warmup_and_until_the_window_fills() -> None:
    weighting = PaperWeighting(TASKS, 100, warmup=0.25, window=0.1)
    assert (weighting.warmup_steps, weighting.window) == (25, 10)
    weights = _run(weighting, range(100))
    first_adaptive = next(i for i, w in enumerate(weights) if w != dict.fromkeys(TASKS, 1.0))
    # The window needs `window` loss differences, all taken after the warm-up.
    assert 25 + 10 - 1 <= first_adaptive <= 25 + 10
    assert all(w == dict.fromkeys(TASKS, 1.0) for w in weights[:first_adaptive])


def test_weights_sum_to_task_count_and_follow_relative_fluctuation() -> None:
    weights = _run(PaperWeighting(TASKS, 100), range(100))[-1]
    assert sum(weights.values()) == pytest.approx(len(TASKS))
    assert weights["segmentation"] > weights["depth"] > weights["normal"] == 0.0


def test_relative_not_absolute_change_counts() -> None:
    # "big" swings by 1 around 100 (1%), "small" by 0.1 around 1 (10%): small must weigh more.
    weighting = PaperWeighting(["big", "small"], 50)
    for step in range(50):
        sign = (-1) ** step
        weighting.update(step, {"big": 100.0 + sign, "small": 1.0 + 0.1 * sign})
    weights = weighting.weights()
    assert weights["small"] > 5 * weights["big"]
    assert sum(weights.values()) == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_losses_are_skipped(bad: float) -> None:
    weighting = PaperWeighting(TASKS, 100)
    clean = PaperWeighting(TASKS, 100)
    for step in range(100):
        losses = _losses(step)
        clean.update(step, losses)
        if step % 7 == 3:
            losses = {**losses, "normal": bad}  # normal is constant, so skipping it must change nothing
        weighting.update(step, losses)
    weights = weighting.weights()
    assert all(math.isfinite(w) for w in weights.values())
    assert weights == clean.weights()
    assert sum(weights.values()) == pytest.approx(3.0)


def test_state_dict_round_trip_gives_identical_future_weights() -> None:
    first = PaperWeighting(TASKS, 100, smoothing=0.5)
    _run(first, range(40))
    second = PaperWeighting(TASKS, 100, smoothing=0.5)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert second.weights() == first.weights()
    assert _run(second, range(40, 100)) == _run(first, range(40, 100))


def test_fresh_weighting_differs_from_restored_one() -> None:
    # Guards the round-trip test: without the restored state the future weights would differ.
    first = PaperWeighting(TASKS, 100)
    _run(first, range(40))
    fresh = PaperWeighting(TASKS, 100)
    assert _run(fresh, range(40, 60)) != _run(first, range(40, 60))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(*[st.floats(1e-3, 1e3)] * 3), min_size=20, max_size=60))
def test_adaptive_weights_are_non_negative_and_sum_to_task_count(losses: list[tuple[float, float, float]]) -> None:
    weighting = PaperWeighting(TASKS, len(losses), warmup=0.2, window=0.1, min_window=2)
    for step, values in enumerate(losses):
        weighting.update(step, dict(zip(TASKS, values, strict=True)))
        weights = weighting.weights()
        assert all(w >= 0 and math.isfinite(w) for w in weights.values())
        assert sum(weights.values()) == pytest.approx(3.0)


# --- the default estimator: loss relative to its dense level ------------------------------------------------


def test_relative_weights_are_one_until_every_baseline_is_measured() -> None:
    weighting = AdaptiveWeighting(["a", "b"], 500)  # baseline: the first 10 losses
    assert weighting.base_steps == 10
    for step in range(9):
        weighting.update(step, {"a": 1.0, "b": 0.1})
        assert weighting.weights() == {"a": 1.0, "b": 1.0}
    weighting.update(9, {"a": 1.0, "b": math.nan})  # b's baseline still lacks one finite loss
    assert weighting.weights() == {"a": 1.0, "b": 1.0}
    weighting.update(10, {"a": 1.0, "b": 0.1})
    assert weighting.weights() != {"a": 1.0, "b": 1.0}


def test_relative_weights_ignore_each_loss_scale() -> None:
    # Both losses stay at their dense level: equal reaction, so w_i ∝ 1 / B_i -> the 10x smaller loss weighs 10x.
    weighting = AdaptiveWeighting(["ce", "cos"], 100, min_base=3, base=0.0)
    for step in range(20):
        weighting.update(step, {"ce": 2.0, "cos": 0.2})
    weights = weighting.weights()
    assert weights["cos"] == pytest.approx(10 * weights["ce"])
    assert sum(weights.values()) == pytest.approx(2.0)
    # weighted losses are then equal: each task's relative change counts alike
    assert weights["ce"] * 2.0 == pytest.approx(weights["cos"] * 0.2)


def test_relative_weights_follow_the_reaction_to_pruning() -> None:
    # Same dense level; "fragile" doubles while "robust" stays: fragile gets 2/3 of the total weight of 2.
    weighting = AdaptiveWeighting(["fragile", "robust"], 100, min_base=3, base=0.0, ema=0.0)
    for step in range(3):
        weighting.update(step, {"fragile": 1.0, "robust": 1.0})
    weighting.update(3, {"fragile": 2.0, "robust": 1.0})
    assert weighting.weights() == pytest.approx({"fragile": 4 / 3, "robust": 2 / 3})


def test_relative_state_round_trips_through_json() -> None:
    a, b = AdaptiveWeighting(TASKS, 200), AdaptiveWeighting(TASKS, 200)
    for step in range(30):
        a.update(step, _losses(step))
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for step in range(30, 40):
        a.update(step, _losses(step))
        b.update(step, _losses(step))
        assert a.weights() == b.weights()


def test_norm_weighting_divides_by_the_dense_level_only() -> None:
    from adapmtl_cli.methods.weighting import NormWeighting

    weighting = make_weighting("norm", ["ce", "cos"], 100)
    assert isinstance(weighting, NormWeighting)
    for step in range(10):
        # ce's loss doubles after its baseline, cos's stays: norm ignores the growth, adaptive would not.
        weighting.update(step, {"ce": 2.0 if step < 5 else 4.0, "cos": 0.1})
    weights = weighting.weights()
    assert weights["cos"] / weights["ce"] == pytest.approx(20.0)  # 1/0.1 against 1/2.0
    assert sum(weights.values()) == pytest.approx(2.0)


def test_the_robustness_power_sharpens_the_tilt_and_zero_is_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapmtl_cli.methods import weighting as module

    def fragile_share(power: float) -> float:
        monkeypatch.setattr(module, "ROBUSTNESS_POWER", power)
        w = AdaptiveWeighting(["fragile", "robust"], 100, min_base=3, base=0.0, ema=0.0)
        for step in range(3):
            w.update(step, {"fragile": 1.0, "robust": 1.0})
        w.update(3, {"fragile": 2.0, "robust": 1.0})
        return w.weights()["fragile"]

    assert fragile_share(1.0) == pytest.approx(4 / 3)  # r = 2 against 1
    assert fragile_share(3.0) == pytest.approx(2 * 8 / 9)  # r^3 = 8 against 1
    assert fragile_share(0.0) == pytest.approx(1.0)  # no tilt: norm's weights (equal dense levels)

"""Δ_T, Δm, Δ_p and the bounded Δ_T: the AdapMTL paper's Table 2, hand-computed examples, sign, identity and
bound properties; the collapse flags on hand-built cases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import LABEL_CLASSES, PREDICTED_CLASSES, MetricMeter, MetricSpec
from adapmtl_cli.tasks.normal import Normal
from adapmtl_cli.tasks.scores import (
    COLLAPSE_CONVENTION,
    DELTA_M_CONVENTION,
    DELTA_P_CONVENTION,
    DELTA_T_BOUNDED_CONVENTION,
    DELTA_T_CONVENTION,
    SCORE_CONVENTIONS,
    DeltaP,
    DeltaT,
    collapse,
    delta_m,
    delta_p,
    delta_t,
    delta_t_bounded,
)
from adapmtl_cli.tasks.segmentation import Segmentation


@dataclass(frozen=True)
class _Stub:
    """A TaskSpec with arbitrary metrics (the paper's depth row has δ1..δ3)."""

    metrics: tuple[MetricSpec, ...]
    name: str = "stub"
    channels: int = 1

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def new_meter(self) -> MetricMeter:
        raise NotImplementedError


PAPER_DEPTH = _Stub(
    (
        MetricSpec("abs_err", False),
        MetricSpec("rel_err", False),
        MetricSpec("delta1", True),
        MetricSpec("delta2", True),
        MetricSpec("delta3", True),
    )
)
SPECS = {"segmentation": Segmentation(num_classes=40), "normal": Normal(), "depth": PAPER_DEPTH}
Row = dict[str, dict[str, float]]
NORMAL_KEYS = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
DEPTH_KEYS = ("abs_err", "rel_err", "delta1", "delta2", "delta3")


def _row(seg: tuple[float, ...], normal: tuple[float, ...], depth: tuple[float, ...]) -> Row:
    return {
        "segmentation": dict(zip(("miou", "pixel_acc"), seg, strict=True)),
        "normal": dict(zip(NORMAL_KEYS, normal, strict=True)),
        "depth": dict(zip(DEPTH_KEYS, depth, strict=True)),
    }


# Table 2 of the AdapMTL paper (NYU-v2, MobileNetV2): dense baseline and AdapMTL rows.
DENSE = _row((19.94, 48.71), (17.85, 16.21, 29.77, 72.19, 86.19), (0.64, 0.24, 58.93, 86.27, 96.16))
ADAPMTL = _row((20.16, 49.14), (17.53, 15.96, 30.16, 72.36, 86.51), (0.64, 0.24, 59.03, 86.57, 96.38))


def test_paper_segmentation_delta_is_summed_not_averaged() -> None:
    seg = "segmentation"
    result = delta_t({seg: DENSE[seg]}, {seg: ADAPMTL[seg]}, SPECS)
    assert result.per_task["segmentation"] == pytest.approx(1.99, abs=0.01)
    assert result.overall == pytest.approx(1.99, abs=0.01)


def test_paper_table_row_reproduces_every_delta() -> None:
    result = delta_t(DENSE, ADAPMTL, SPECS)
    assert result.per_task == pytest.approx({"segmentation": 1.99, "normal": 5.25, "depth": 0.75}, abs=0.01)
    assert result.overall == pytest.approx(2.66, abs=0.01)
    assert result.skipped == ()
    assert "higher is better" in result.convention and "\n" not in result.convention


def test_delta_m_is_flat_and_negative_when_better() -> None:
    dense = {"depth": {"abs_err": 2.0, "delta1": 0.5}}
    # abs_err 2.0 -> 1.0 improves by 50 %, delta1 0.5 -> 0.45 worsens by 10 %: flat mean -(50 - 10)/2.
    pruned = {"depth": {"abs_err": 1.0, "delta1": 0.45}}
    assert delta_m(dense, pruned, SPECS) == pytest.approx(-20.0)
    assert delta_t(dense, pruned, SPECS).overall == pytest.approx(40.0)


def test_zero_dense_metric_is_skipped_and_reported() -> None:
    dense = {"depth": {"abs_err": 0.0, "delta1": 0.5}, "segmentation": {"miou": 0.0}}
    pruned = {"depth": {"abs_err": 0.1, "delta1": 0.55}, "segmentation": {"miou": 0.2}}
    result = delta_t(dense, pruned, SPECS)
    assert result.skipped == ("depth.abs_err", "segmentation.miou")
    assert result.per_task == pytest.approx({"depth": 10.0})
    assert result.overall == pytest.approx(10.0)
    assert delta_m(dense, pruned, SPECS) == pytest.approx(-10.0)


def test_nothing_comparable_gives_nan() -> None:
    result = delta_t({"depth": {"abs_err": 0.0}}, {"depth": {"abs_err": 1.0}}, SPECS)
    assert result.per_task == {} and math.isnan(result.overall)
    assert math.isnan(delta_m({"depth": {"abs_err": 0.0}}, {"depth": {"abs_err": 1.0}}, SPECS))


def test_mismatched_inputs_report_every_problem() -> None:
    dense = {"depth": {"abs_err": 1.0, "bogus": 1.0, "delta1": 0.5}, "sky": {"x": 1.0}, "normal": {}}
    pruned = {"depth": {"abs_err": 1.0}}
    with pytest.raises(ConfigError) as info:
        delta_t(dense, pruned, SPECS)
    message = str(info.value)
    assert "'depth' has no metric 'bogus'" in message
    assert "pruned metrics lack depth.delta1" in message
    assert "unknown task 'sky'" in message
    assert "pruned metrics lack task 'normal'" in message


_values = st.floats(0.01, 1000.0, allow_nan=False)


@given(seg=st.tuples(_values, _values), normal=st.tuples(*[_values] * 5), depth=st.tuples(*[_values] * 5))
def test_identical_metrics_score_zero(
    seg: tuple[float, ...], normal: tuple[float, ...], depth: tuple[float, ...]
) -> None:
    row = _row(seg, normal, depth)
    result = delta_t(row, row, SPECS)
    assert isinstance(result, DeltaT)
    assert result.overall == 0.0 and set(result.per_task.values()) == {0.0}
    assert delta_m(row, row, SPECS) == 0.0


@given(base=_values, factor=st.floats(1.001, 10.0))
def test_rising_lower_is_better_metric_scores_worse(base: float, factor: float) -> None:
    dense = {"normal": {"mean_angle": base}}
    pruned = {"normal": {"mean_angle": base * factor}}
    assert delta_t(dense, pruned, SPECS).overall < 0
    assert delta_m(dense, pruned, SPECS) > 0


@given(base=_values, factor=st.floats(1.001, 10.0))
def test_rising_higher_is_better_metric_scores_better(base: float, factor: float) -> None:
    dense = {"normal": {"within_30": base}}
    pruned = {"normal": {"within_30": base * factor}}
    result = delta_t(dense, pruned, SPECS)
    assert result.overall > 0
    assert result.overall == pytest.approx((factor - 1) * 100)
    assert delta_m(dense, pruned, SPECS) == pytest.approx(-result.overall)


# --- Δ_p (LibMTL count_improvement) and the three scores side by side -----------------------------------


def test_perfect_copy_scores_zero_on_every_score() -> None:
    result = delta_p(DENSE, DENSE, SPECS)
    assert isinstance(result, DeltaP)
    assert result.overall == 0.0 and result.per_task == {"segmentation": 0.0, "normal": 0.0, "depth": 0.0}
    assert delta_t(DENSE, DENSE, SPECS).overall == 0.0 and delta_m(DENSE, DENSE, SPECS) == 0.0


def test_mixed_directions_within_one_task() -> None:
    dense = {"depth": {"abs_err": 2.0, "delta1": 0.5}}
    pruned = {"depth": {"abs_err": 1.0, "delta1": 0.45}}  # +50 % and -10 %
    assert delta_p(dense, pruned, SPECS).per_task == pytest.approx({"depth": 0.2})  # mean (50 - 10)/2 %, a fraction
    assert delta_t(dense, pruned, SPECS).per_task == pytest.approx({"depth": 40.0})  # summed, percent
    assert delta_m(dense, pruned, SPECS) == pytest.approx(-20.0)  # flat mean, sign flipped


def test_known_two_task_example() -> None:
    dense = {"segmentation": {"miou": 0.5, "pixel_acc": 0.8}, "normal": {"mean_angle": 20.0}}
    # miou +10 %, pixel_acc -5 %, mean_angle 20 -> 25 degrees is -25 %
    pruned = {"segmentation": {"miou": 0.55, "pixel_acc": 0.76}, "normal": {"mean_angle": 25.0}}
    p = delta_p(dense, pruned, SPECS)
    assert p.per_task == pytest.approx({"segmentation": 0.025, "normal": -0.25})
    assert p.overall == pytest.approx(-0.1125)
    t = delta_t(dense, pruned, SPECS)
    assert t.per_task == pytest.approx({"segmentation": 5.0, "normal": -25.0})
    assert t.overall == pytest.approx(-10.0)
    assert delta_m(dense, pruned, SPECS) == pytest.approx(20.0 / 3)  # -(10 - 5 - 25) / 3


def test_delta_p_skips_zero_dense_metrics_like_delta_t() -> None:
    dense = {"depth": {"abs_err": 0.0, "delta1": 0.5}}
    pruned = {"depth": {"abs_err": 0.1, "delta1": 0.55}}
    result = delta_p(dense, pruned, SPECS)
    assert result.skipped == ("depth.abs_err",)
    assert result.per_task == pytest.approx({"depth": 0.1}) and result.overall == pytest.approx(0.1)
    assert math.isnan(delta_p({"depth": {"abs_err": 0.0}}, {"depth": {"abs_err": 1.0}}, SPECS).overall)


def test_delta_p_reports_mismatches() -> None:
    with pytest.raises(ConfigError, match="pruned metrics lack depth.delta1"):
        delta_p({"depth": {"delta1": 0.5}}, {"depth": {}}, SPECS)


@given(base=_values, new=_values)
def test_one_metric_per_task_makes_delta_p_delta_t_over_100(base: float, new: float) -> None:
    dense = {"normal": {"mean_angle": base}, "segmentation": {"miou": base}}
    pruned = {"normal": {"mean_angle": new}, "segmentation": {"miou": new}}
    assert delta_p(dense, pruned, SPECS).overall == pytest.approx(delta_t(dense, pruned, SPECS).overall / 100)
    assert delta_p(dense, pruned, SPECS).overall == pytest.approx(0.0, abs=1e-12)  # the two changes cancel


def test_score_conventions_describe_every_score() -> None:
    assert set(SCORE_CONVENTIONS) == {"delta_t", "delta_m", "delta_p", "delta_t_bounded"}
    t, m, p = SCORE_CONVENTIONS["delta_t"], SCORE_CONVENTIONS["delta_m"], SCORE_CONVENTIONS["delta_p"]
    b = SCORE_CONVENTIONS["delta_t_bounded"]
    assert (t.symbol, t.higher_is_better, t.unit) == ("Δ_T", True, "percent")
    assert (m.symbol, m.higher_is_better, m.unit) == ("Δm", False, "percent")
    assert (p.symbol, p.higher_is_better, p.unit) == ("Δ_p", True, "fraction")
    assert (b.symbol, b.higher_is_better, b.unit) == ("bounded Δ_T", True, "percent")
    assert (t.text, m.text, p.text) == (DELTA_T_CONVENTION, DELTA_M_CONVENTION, DELTA_P_CONVENTION)
    assert b.text == DELTA_T_BOUNDED_CONVENTION and "[−100, +100]" in b.text
    assert "sum" in t.averaging and "flat" in m.averaging and "mean over each task" in p.averaging
    assert "clipped to ±100 %" in b.averaging and "sum over each task" in b.averaging
    assert delta_p(DENSE, ADAPMTL, SPECS).convention == DELTA_P_CONVENTION
    assert delta_t_bounded(DENSE, ADAPMTL, SPECS).convention == DELTA_T_BOUNDED_CONVENTION
    for convention in SCORE_CONVENTIONS.values():
        assert "dense" in convention.baseline and "\n" not in convention.text
        assert ("higher is better" in convention.text) == convention.higher_is_better


# --- the bounded Δ_T ---------------------------------------------------------------------------------------


def test_bounded_delta_t_equals_delta_t_on_the_paper_row() -> None:
    bounded, plain = delta_t_bounded(DENSE, ADAPMTL, SPECS), delta_t(DENSE, ADAPMTL, SPECS)
    assert bounded.per_task == plain.per_task and bounded.overall == plain.overall
    assert bounded.overall == pytest.approx(2.66, abs=0.01)


def test_bounded_delta_t_clips_each_metric_before_the_sums() -> None:
    # abs_err 0.001 -> 0.5 is -49,900 % (the kind of row that reads -21,838): clipped to -100;
    # delta1 0.2 -> 0.7 is +250 %: clipped to +100; miou 0.5 -> 0.4 is -20 %: kept.
    dense = {"depth": {"abs_err": 0.001, "delta1": 0.2}, "segmentation": {"miou": 0.5}}
    pruned = {"depth": {"abs_err": 0.5, "delta1": 0.7}, "segmentation": {"miou": 0.4}}
    plain = delta_t(dense, pruned, SPECS)
    assert plain.per_task["depth"] == pytest.approx(-49_900 + 250)
    bounded = delta_t_bounded(dense, pruned, SPECS)
    assert bounded.per_task == pytest.approx({"depth": -100 + 100, "segmentation": -20.0})
    assert bounded.overall == pytest.approx(-10.0)


def test_bounded_delta_t_skips_like_delta_t() -> None:
    dense = {"depth": {"abs_err": 0.0, "delta1": 0.5}}
    pruned = {"depth": {"abs_err": 0.1, "delta1": 5.0}}
    result = delta_t_bounded(dense, pruned, SPECS)
    assert result.skipped == ("depth.abs_err",) and result.per_task == {"depth": 100.0}
    assert math.isnan(delta_t_bounded({"depth": {"abs_err": 0.0}}, {"depth": {"abs_err": 1.0}}, SPECS).overall)
    with pytest.raises(ConfigError, match="pruned metrics lack depth.delta1"):
        delta_t_bounded({"depth": {"delta1": 0.5}}, {"depth": {}}, SPECS)


def test_bounded_delta_t_keeps_a_nan_metric_nan() -> None:
    result = delta_t_bounded({"depth": {"abs_err": 1.0}}, {"depth": {"abs_err": math.nan}}, SPECS)
    assert math.isnan(result.per_task["depth"]) and math.isnan(result.overall)
    inf = delta_t_bounded({"depth": {"abs_err": 1.0}}, {"depth": {"abs_err": math.inf}}, SPECS)
    assert inf.per_task == {"depth": -100.0}


_any_value = st.floats(1e-6, 1e6, allow_nan=False)


@given(
    seg=st.tuples(*[_any_value] * 2),
    normal=st.tuples(*[_any_value] * 5),
    depth=st.tuples(*[_any_value] * 5),
    pseg=st.tuples(*[_any_value] * 2),
    pnormal=st.tuples(*[_any_value] * 5),
    pdepth=st.tuples(*[_any_value] * 5),
)
def test_bounded_delta_t_stays_within_100_points_per_metric(
    seg: tuple[float, ...],
    normal: tuple[float, ...],
    depth: tuple[float, ...],
    pseg: tuple[float, ...],
    pnormal: tuple[float, ...],
    pdepth: tuple[float, ...],
) -> None:
    dense, pruned = _row(seg, normal, depth), _row(pseg, pnormal, pdepth)
    result = delta_t_bounded(dense, pruned, SPECS)
    for task, value in result.per_task.items():
        count = len(dense[task])
        assert -100.0 * count <= value <= 100.0 * count
    widest = max(len(m) for m in dense.values())
    assert -100.0 * widest <= result.overall <= 100.0 * widest


_dense_value = st.floats(0.01, 100.0, allow_nan=False)
_ratio = st.floats(0.0, 2.0, allow_nan=False)  # pruned = dense × ratio: every change within ±100 %


@given(base=st.tuples(*[_dense_value] * 5), ratios=st.tuples(*[_ratio] * 5))
def test_bounded_delta_t_equals_delta_t_when_no_change_exceeds_100_percent(
    base: tuple[float, ...], ratios: tuple[float, ...]
) -> None:
    dense = {"normal": dict(zip(NORMAL_KEYS, base, strict=True))}
    pruned = {"normal": {k: b * r for k, b, r in zip(NORMAL_KEYS, base, ratios, strict=True)}}
    bounded, plain = delta_t_bounded(dense, pruned, SPECS), delta_t(dense, pruned, SPECS)
    assert bounded.per_task == pytest.approx(plain.per_task) and bounded.overall == pytest.approx(plain.overall)


@given(
    base=st.tuples(*[_dense_value] * 5),
    pruned_values=st.tuples(*[st.floats(0.0, 1000.0, allow_nan=False)] * 5),
    which=st.integers(0, 4),
    step=st.floats(0.0, 1000.0, allow_nan=False),
)
def test_bounded_delta_t_is_monotone_in_each_metric(
    base: tuple[float, ...], pruned_values: tuple[float, ...], which: int, step: float
) -> None:
    """Moving one metric in its better direction never lowers the score (and never raises it the other way)."""
    dense = {"normal": dict(zip(NORMAL_KEYS, base, strict=True))}
    before = dict(zip(NORMAL_KEYS, pruned_values, strict=True))
    key = NORMAL_KEYS[which]
    higher_is_better = next(m.higher_is_better for m in Normal.metrics if m.name == key)
    after = {**before, key: before[key] + (step if higher_is_better else -step)}
    worse = {**before, key: before[key] - (step if higher_is_better else -step)}
    score = delta_t_bounded(dense, {"normal": before}, SPECS).overall
    assert delta_t_bounded(dense, {"normal": after}, SPECS).overall >= score - 1e-9
    assert delta_t_bounded(dense, {"normal": worse}, SPECS).overall <= score + 1e-9


# --- collapse flags ----------------------------------------------------------------------------------------

TWO = {"depth": {"abs_err": 0.2, "delta1": 0.8}, "segmentation": {"miou": 0.5, "pixel_acc": 0.7}}


def _pruned(**changes: dict[str, float]) -> Row:
    return {task: {**metrics, **changes.get(task, {})} for task, metrics in TWO.items()}


def test_nothing_collapses_when_the_pruned_model_equals_dense() -> None:
    result = collapse(TWO, TWO, SPECS, {"segmentation": {PREDICTED_CLASSES: 12, LABEL_CLASSES: 13}})
    assert result.per_task == {"depth": False, "segmentation": False}
    assert result.reasons == {} and result.convention == COLLAPSE_CONVENTION


def test_an_error_metric_above_three_times_dense_collapses_the_task() -> None:
    result = collapse(TWO, _pruned(depth={"abs_err": 0.61}), SPECS)
    assert result.per_task == {"depth": True, "segmentation": False}
    assert result.reasons == {"depth": ("abs_err 0.61 > 3 × dense 0.2",)}


def test_exactly_three_times_dense_is_not_a_collapse() -> None:
    assert collapse(TWO, _pruned(depth={"abs_err": 0.2 * 3}), SPECS).per_task["depth"] is False


def test_a_higher_is_better_metric_falling_far_is_not_an_error_blowup() -> None:
    # delta1 0.8 -> 0.01 is a bad drop, but the error rule reads lower-is-better metrics only (Δ_T shows it).
    assert collapse(TWO, _pruned(depth={"delta1": 0.01}), SPECS).per_task["depth"] is False


def test_error_metrics_without_a_positive_finite_dense_value_are_not_checked() -> None:
    dense = {"depth": {"abs_err": 0.0, "rel_err": math.inf}}
    pruned = {"depth": {"abs_err": 5.0, "rel_err": 1e9}}
    assert collapse(dense, pruned, SPECS).per_task == {"depth": False}


def test_a_non_finite_pruned_error_collapses_the_task() -> None:
    result = collapse(TWO, _pruned(depth={"abs_err": math.nan}), SPECS)
    assert result.per_task["depth"] is True and result.reasons["depth"] == ("abs_err nan > 3 × dense 0.2",)


def test_a_single_predicted_class_collapses_a_classifying_task() -> None:
    diagnostics = {"segmentation": {PREDICTED_CLASSES: 1, LABEL_CLASSES: 13}}
    result = collapse(TWO, TWO, SPECS, diagnostics)
    assert result.per_task == {"depth": False, "segmentation": True}
    assert result.reasons == {
        "segmentation": ("predicts a single class over the whole split while the labels hold 13",)
    }


def test_a_single_class_is_no_collapse_when_the_labels_hold_one_class_too() -> None:
    diagnostics = {"segmentation": {PREDICTED_CLASSES: 1, LABEL_CLASSES: 1}}
    assert collapse(TWO, TWO, SPECS, diagnostics).per_task["segmentation"] is False


def test_two_predicted_classes_and_unknown_label_counts() -> None:
    assert collapse(TWO, TWO, SPECS, {"segmentation": {PREDICTED_CLASSES: 2}}).per_task["segmentation"] is False
    alone = collapse(TWO, TWO, SPECS, {"segmentation": {PREDICTED_CLASSES: 1}})
    assert alone.reasons == {"segmentation": ("predicts a single class over the whole split",)}


def test_both_causes_are_listed() -> None:
    diagnostics = {"segmentation": {PREDICTED_CLASSES: 1, LABEL_CLASSES: 4}}
    dense = {"segmentation": {"miou": 0.5, "weighted_ce": 0.4}}
    specs = {"segmentation": _Stub((MetricSpec("miou", True), MetricSpec("weighted_ce", False)))}
    result = collapse(dense, {"segmentation": {"miou": 0.1, "weighted_ce": 2.0}}, specs, diagnostics)
    assert result.reasons["segmentation"] == (
        "weighted_ce 2 > 3 × dense 0.4",
        "predicts a single class over the whole split while the labels hold 4",
    )


def test_collapse_reports_mismatches_like_the_scores() -> None:
    with pytest.raises(ConfigError, match="pruned metrics lack task 'segmentation'"):
        collapse(TWO, {"depth": TWO["depth"]}, SPECS)

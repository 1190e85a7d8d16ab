"""Δ_T, Δm and Δ_p: the AdapMTL paper's Table 2, hand-computed examples, sign and identity properties."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import MetricMeter, MetricSpec
from adapmtl_cli.tasks.normal import Normal
from adapmtl_cli.tasks.scores import (
    DELTA_M_CONVENTION,
    DELTA_P_CONVENTION,
    DELTA_T_CONVENTION,
    SCORE_CONVENTIONS,
    DeltaP,
    DeltaT,
    delta_m,
    delta_p,
    delta_t,
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
    assert set(SCORE_CONVENTIONS) == {"delta_t", "delta_m", "delta_p"}
    t, m, p = SCORE_CONVENTIONS["delta_t"], SCORE_CONVENTIONS["delta_m"], SCORE_CONVENTIONS["delta_p"]
    assert (t.symbol, t.higher_is_better, t.unit) == ("Δ_T", True, "percent")
    assert (m.symbol, m.higher_is_better, m.unit) == ("Δm", False, "percent")
    assert (p.symbol, p.higher_is_better, p.unit) == ("Δ_p", True, "fraction")
    assert (t.text, m.text, p.text) == (DELTA_T_CONVENTION, DELTA_M_CONVENTION, DELTA_P_CONVENTION)
    assert "sum" in t.averaging and "flat" in m.averaging and "mean over each task" in p.averaging
    assert delta_p(DENSE, ADAPMTL, SPECS).convention == DELTA_P_CONVENTION
    for convention in SCORE_CONVENTIONS.values():
        assert "dense" in convention.baseline and "\n" not in convention.text
        assert ("higher is better" in convention.text) == convention.higher_is_better

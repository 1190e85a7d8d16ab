"""Δ_T and Δm against the AdapMTL paper's Table 2 and their sign and identity properties."""

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
from adapmtl_cli.tasks.scores import DeltaT, delta_m, delta_t
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

"""Keypoints/edges L1 kinds (NaN = invalid, never in a gradient) and the Taskonomy task variants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adapmtl_cli.errors import ConfigError, DataError, DiscoveryError
from adapmtl_cli.tasks import TASKS, canonical_task_name, get_task
from adapmtl_cli.tasks.base import LABEL_CLASSES, PREDICTED_CLASSES, DiagnosticMeter, MetricMeter, TaskSpec
from adapmtl_cli.tasks.dense_regression import (
    Edges,
    Keypoints,
    TaskonomyDepth,
    TaskonomyNormal,
    WeightedSegmentation,
)
from adapmtl_cli.tasks.depth import Depth
from adapmtl_cli.tasks.normal import Normal
from adapmtl_cli.tasks.segmentation import Segmentation

NAN = float("nan")


def _map(*rows: list[float]) -> torch.Tensor:
    """A (1, 1, H, W) float map from rows of values."""
    return torch.tensor([list(rows)], dtype=torch.float32).unsqueeze(1)


# --- keypoints and edges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "kind"),
    [("keypoints", Keypoints), ("keypoint", Keypoints), ("keypoints2d", Keypoints), ("KeyPoints2D", Keypoints)]
    + [("edges", Edges), ("edge", Edges), ("edge_texture", Edges), ("edge-texture", Edges)],
)
def test_aliases_build_the_registered_kinds(alias: str, kind: type) -> None:
    task = get_task(alias)
    assert type(task) is kind and task.name == canonical_task_name(alias)


@pytest.mark.parametrize("name", ["keypoints", "edges"])
def test_contract(name: str) -> None:
    task = TASKS[name]()
    assert isinstance(task, TaskSpec) and task.name == name and task.channels == 1
    assert [(m.name, m.higher_is_better) for m in task.metrics] == [("l1", False)]
    pred = torch.randn(2, 1, 3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.rand(2, 1, 6, 8) * 2 - 1
    target[0, 0, :2] = NAN
    loss = task.loss(pred, target)
    loss.backward()
    assert loss.dim() == 0 and math.isfinite(loss.item()) and torch.isfinite(pred.grad).all()
    meter = task.new_meter()
    assert isinstance(meter, MetricMeter)
    meter.update(pred.detach(), target)
    assert list(meter.compute()) == ["l1"]


def test_loss_is_mean_abs_error_over_valid_pixels_only() -> None:
    pred = _map([0.5, -1.0], [0.25, 0.0]).requires_grad_()
    target = _map([0.0, NAN], [1.0, 0.0])
    loss = Keypoints().loss(pred, target)
    # valid errors 0.5, 0.75, 0 over 3 pixels
    assert loss.item() == pytest.approx(1.25 / 3)
    loss.backward()
    expected = _map([1 / 3, 0.0], [-1 / 3, 0.0])  # sign / count; the NaN pixel gets exactly 0
    assert torch.equal(pred.grad, expected)


def test_all_nan_target_gives_zero_loss_with_a_finite_zero_gradient() -> None:
    pred = _map([0.3, -0.2]).requires_grad_()
    loss = Edges().loss(pred, _map([NAN, float("inf")]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_target_without_channel_dim_and_lower_resolution_prediction() -> None:
    pred = torch.full((1, 1, 2, 2), 0.2)  # bilinear upsampling of a constant stays constant
    target = torch.zeros(1, 4, 4)
    assert Keypoints().loss(pred, target).item() == pytest.approx(0.2)


def test_meter_pools_pixels_not_batch_means() -> None:
    meter = Edges().new_meter()
    meter.update(_map([1.0, 0.0], [0.0, 0.0]), _map([0.0, 0.0], [0.0, 0.0]))  # batch mean 0.25
    meter.update(_map([1.0, 5.0]), _map([0.0, NAN]))  # batch mean 1 (the NaN pixel is skipped)
    assert meter.compute() == {"l1": pytest.approx(2 / 5)}  # not (0.25 + 1) / 2


def test_meter_without_valid_pixels_raises() -> None:
    meter = Keypoints().new_meter()
    meter.update(_map([0.0]), _map([NAN]))
    with pytest.raises(DataError, match="keypoints meter saw no valid pixel"):
        meter.compute()


@pytest.mark.parametrize(
    ("pred", "target", "error", "message"),
    [
        (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long), DataError, "expects float targets"),
        (torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2), DiscoveryError, "expects 1 output channels"),
        (torch.zeros(2, 1, 2, 2), torch.zeros(1, 1, 2, 2), DiscoveryError, "batch size 2"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.long), torch.zeros(1, 1, 2, 2), DiscoveryError, "float output"),
    ],
)
def test_bad_shapes_are_named(pred, target, error, message) -> None:
    with pytest.raises(error, match=message):
        Edges().loss(pred, target)


# --- weighted segmentation ------------------------------------------------------------------------------


def _two_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel A: label 0, logits (0, 0) -> CE ln 2. Pixel B: label 1, logits (ln 3, 0) -> CE ln 4."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(1, 2, 1, 2)
    return logits, torch.tensor([[[0, 1]]])


def test_weighted_loss_matches_the_hand_computed_weighted_mean() -> None:
    logits, labels = _two_pixels()
    task = WeightedSegmentation(num_classes=2, class_weights=(1.0, 3.0))
    # (1 * ln 2 + 3 * ln 4) / (1 + 3) = 7/4 ln 2; unweighted it would be 3/2 ln 2
    assert task.loss(logits, labels).item() == pytest.approx(1.75 * math.log(2))
    assert WeightedSegmentation(num_classes=2).loss(logits, labels).item() == pytest.approx(1.5 * math.log(2))
    torch_ref = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]))
    assert task.loss(logits, labels).item() == pytest.approx(torch_ref.item())


def test_weighted_loss_skips_ignored_and_out_of_range_labels() -> None:
    logits, labels = _two_pixels()
    wide = torch.cat([logits, torch.zeros(1, 2, 1, 2)], dim=3)
    task = WeightedSegmentation(num_classes=2, class_weights=(1.0, 3.0))
    assert task.loss(wide, torch.tensor([[[0, 1, -1, 7]]])).item() == pytest.approx(1.75 * math.log(2))
    pred = torch.zeros(1, 2, 1, 2, requires_grad=True)
    loss = task.loss(pred, torch.full((1, 1, 2), -1))
    assert loss.item() == 0.0 and loss.requires_grad


def test_weighted_meter_reports_segmentation_metrics_plus_pooled_weighted_ce() -> None:
    logits, labels = _two_pixels()
    task = WeightedSegmentation(num_classes=2, class_weights=(1.0, 3.0))
    assert [m.name for m in task.metrics] == ["miou", "pixel_acc", "weighted_ce"]
    assert [m.higher_is_better for m in task.metrics] == [True, True, False]
    meter = task.new_meter()
    meter.update(logits[..., :1], labels[..., :1])  # pixel A alone
    meter.update(logits[..., 1:], labels[..., 1:])  # pixel B alone
    base = Segmentation(num_classes=2).new_meter()
    base.update(logits, labels)
    assert meter.compute() == {**base.compute(), "weighted_ce": pytest.approx(1.75 * math.log(2))}


def test_weighted_meter_passes_the_segmentation_class_counts_on() -> None:
    logits, labels = _two_pixels()
    meter = WeightedSegmentation(num_classes=2, class_weights=(1.0, 3.0)).new_meter()
    meter.update(logits, labels)
    base = Segmentation(num_classes=2).new_meter()
    base.update(logits, labels)
    assert isinstance(meter, DiagnosticMeter) and isinstance(base, DiagnosticMeter)
    assert meter.diagnostics() == base.diagnostics()
    assert set(meter.diagnostics()) == {PREDICTED_CLASSES, LABEL_CLASSES}
    assert "weighted_ce" in meter.compute() and PREDICTED_CLASSES not in meter.compute()


@pytest.mark.parametrize("task", [Depth(), Normal(), TaskonomyDepth(), TaskonomyNormal(), Keypoints(), Edges()])
def test_regression_meters_have_no_diagnostics(task: TaskSpec) -> None:
    assert not isinstance(task.new_meter(), DiagnosticMeter)


def test_weighted_meter_rejects_labels_outside_the_classes() -> None:
    meter = WeightedSegmentation(num_classes=2).new_meter()
    with pytest.raises(DataError, match="label 5"):
        meter.update(torch.zeros(1, 2, 1, 1), torch.tensor([[[5]]]))


@pytest.mark.parametrize("weights", [(1.0,), (1.0, -1.0), (0.0, 0.0), (1.0, math.nan), (1.0, math.inf)], ids=str)
def test_bad_class_weights_are_a_config_error(weights: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="class_weights must be 2 finite non-negative"):
        WeightedSegmentation(num_classes=2, class_weights=weights)


def test_weighted_segmentation_keeps_the_segmentation_checks() -> None:
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        WeightedSegmentation(num_classes=1)
    task = WeightedSegmentation()
    assert (task.name, task.channels, task.ignore_index) == ("segmentation", 17, -1)
    with pytest.raises(DiscoveryError, match="expects 17 output channels"):
        task.loss(torch.zeros(1, 13, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


# --- normal and depth -----------------------------------------------------------------------------------


def test_normal_variant_adds_pooled_mean_cosine() -> None:
    task = TaskonomyNormal()
    assert [m.name for m in task.metrics] == [m.name for m in Normal.metrics] + ["cosine"]
    assert task.metrics[-1].higher_is_better and task.name == "normal" and task.channels == 3
    gt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    pred = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 3)
    meter = task.new_meter()
    meter.update(pred[..., :2], gt[..., :2])  # cosines 1 and 0
    meter.update(pred[..., 2:], gt[..., 2:])  # invalid: zero ground truth
    metrics = meter.compute()
    assert metrics["cosine"] == pytest.approx(0.5)
    assert metrics["mean_angle"] == pytest.approx(45.0)
    assert task.loss(pred, gt).item() == pytest.approx(Normal().loss(pred, gt).item())


def test_depth_variant_only_relabels_units() -> None:
    task = TaskonomyDepth()
    assert [m.name for m in task.metrics] == [m.name for m in Depth.metrics]
    assert task.metrics[0].unit == "log-normalised depth"
    pred, target = torch.full((1, 1, 1, 2), 0.5), torch.tensor([[[[0.25, 0.0]]]])
    assert task.loss(pred, target).item() == pytest.approx(0.25)  # the 0 pixel is invalid
    meter = task.new_meter()
    meter.update(pred, target)
    assert meter.compute()["abs_err"] == pytest.approx(0.25)

"""Segmentation loss and mIoU / pixel-accuracy meter on hand-checked tiny label maps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from adapmtl_cli.errors import ConfigError, DataError, DiscoveryError
from adapmtl_cli.tasks.base import LABEL_CLASSES, PREDICTED_CLASSES, DiagnosticMeter
from adapmtl_cli.tasks.segmentation import Segmentation


def _logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits (B, C, H, W) whose argmax is ``labels``."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 10


def _metrics(task: Segmentation, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    meter = task.new_meter()
    meter.update(pred, target)
    return meter.compute()


def test_perfect_prediction_scores_one() -> None:
    task = Segmentation(num_classes=4)
    target = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [1, 0]]])
    assert _metrics(task, _logits(target, 4), target) == {"miou": 1.0, "pixel_acc": 1.0}


def test_one_wrong_pixel_gives_hand_computed_scores() -> None:
    task = Segmentation(num_classes=3)
    target = torch.tensor([[[0, 0], [1, 1]]])
    guess = torch.tensor([[[0, 1], [1, 1]]])
    # IoU0 = 1 / (2 + 1 - 1) = 1/2, IoU1 = 2 / (2 + 3 - 2) = 2/3; class 2 is in neither map and is left out.
    metrics = _metrics(task, _logits(guess, 3), target)
    assert metrics["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics["pixel_acc"] == pytest.approx(3 / 4)


def test_class_only_in_prediction_counts_with_iou_zero() -> None:
    task = Segmentation(num_classes=3)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    guess = torch.tensor([[[0, 0], [0, 2]]])
    # IoU0 = 3/4, IoU2 = 0/1; the AdaShare convention (TP > 0 only) would report 3/4.
    assert _metrics(task, _logits(guess, 3), target)["miou"] == pytest.approx(3 / 8)


def test_ignored_pixels_change_nothing() -> None:
    task = Segmentation(num_classes=3)
    target = torch.tensor([[[0, -1], [1, -1]]])
    guess = torch.tensor([[[0, 2], [1, 2]]])
    assert _metrics(task, _logits(guess, 3), target) == {"miou": 1.0, "pixel_acc": 1.0}
    loss = task.loss(_logits(guess, 3), target)
    assert loss.item() == pytest.approx(task.loss(_logits(guess[:, :, :1], 3), target[:, :, :1]).item())


def test_custom_ignore_index() -> None:
    task = Segmentation(num_classes=3, ignore_index=255)
    target = torch.tensor([[[0, 255], [1, 255]]])
    guess = torch.tensor([[[0, 2], [1, 2]]])
    assert _metrics(task, _logits(guess, 3), target)["pixel_acc"] == 1.0


def test_streaming_two_batches_equals_one_big_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    task = Segmentation(num_classes=5)
    pred = torch.randn(4, 5, 6, 7, generator=gen)
    target = torch.randint(-1, 5, (4, 6, 7), generator=gen)
    streamed = task.new_meter()
    streamed.update(pred[:1], target[:1])
    streamed.update(pred[1:], target[1:])
    assert streamed.compute() == _metrics(task, pred, target)


def test_bf16_and_lower_resolution_predictions_are_accepted() -> None:
    task = Segmentation(num_classes=3)
    target = torch.ones(2, 8, 8, dtype=torch.long)
    pred = _logits(torch.ones(2, 2, 2, dtype=torch.long), 3).bfloat16()
    assert _metrics(task, pred, target) == {"miou": 1.0, "pixel_acc": 1.0}
    loss = task.loss(pred.requires_grad_(), target)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_loss_is_cross_entropy_over_valid_pixels() -> None:
    gen = torch.Generator().manual_seed(1)
    task = Segmentation(num_classes=4)
    pred = torch.randn(2, 4, 3, 5, generator=gen, requires_grad=True)
    target = torch.randint(-1, 4, (2, 3, 5), generator=gen)
    expected = F.cross_entropy(pred, target, ignore_index=-1)
    loss = task.loss(pred, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_uniform_logits_give_log_num_classes() -> None:
    task = Segmentation(num_classes=5)
    target = torch.tensor([[[0, 4], [-1, 2]]])
    assert task.loss(torch.zeros(1, 5, 2, 2), target).item() == pytest.approx(math.log(5))


def test_no_valid_pixel_gives_zero_loss_with_grad() -> None:
    task = Segmentation(num_classes=3)
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = task.loss(pred, torch.full((2, 4, 4), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and (pred.grad == 0).all()


def test_out_of_range_labels_are_skipped_by_loss_and_rejected_by_meter() -> None:
    task = Segmentation(num_classes=3)
    target = torch.tensor([[[0, 7], [1, 1]]])
    assert math.isfinite(task.loss(torch.randn(1, 3, 2, 2), target).item())
    with pytest.raises(DataError, match="label 7 outside 0..2"):
        task.new_meter().update(torch.randn(1, 3, 2, 2), target)


def test_meter_without_labelled_pixels_raises() -> None:
    task = Segmentation(num_classes=3)
    meter = task.new_meter()
    meter.update(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), -1))
    with pytest.raises(DataError, match="no labelled pixel"):
        meter.compute()


def test_channel_mismatch_raises_discovery_error() -> None:
    task = Segmentation(num_classes=13)
    with pytest.raises(DiscoveryError) as info:
        task.loss(torch.randn(2, 40, 24, 32), torch.zeros(2, 24, 32, dtype=torch.long))
    assert str(info.value) == (
        "task 'segmentation' expects 13 output channels, got 40 (2,40,24,32); check --outputs or --num-classes"
    )


def test_batch_mismatch_raises_discovery_error() -> None:
    task = Segmentation(num_classes=3)
    with pytest.raises(DiscoveryError, match="batch size 4 but its target has 2"):
        task.new_meter().update(torch.randn(4, 3, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long))


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        Segmentation(num_classes=1)
    with pytest.raises(ConfigError, match="is a real class"):
        Segmentation(num_classes=13, ignore_index=0)


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
)
def test_scores_are_fractions(num_classes: int, seed: int, height: int, width: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    task = Segmentation(num_classes=num_classes)
    target = torch.randint(0, num_classes, (2, height, width), generator=gen)
    pred = torch.randn(2, num_classes, height, width, generator=gen)
    metrics = _metrics(task, pred, target)
    assert 0.0 <= metrics["miou"] <= 1.0
    assert 0.0 <= metrics["pixel_acc"] <= 1.0
    assert (metrics["miou"] == 1.0) == (metrics["pixel_acc"] == 1.0)


# --- diagnostics: the classes predicted, not a metric --------------------------------------------------


def test_meter_counts_the_classes_predicted_and_labelled_apart_from_the_metrics() -> None:
    task = Segmentation(num_classes=5)
    target = torch.tensor([[[0, 1], [2, -1]]])
    guess = torch.tensor([[[0, 0], [0, 4]]])  # one class on the labelled pixels; class 4 only on the ignored one
    meter = task.new_meter()
    meter.update(_logits(guess, 5), target)
    assert isinstance(meter, DiagnosticMeter)
    assert meter.diagnostics() == {PREDICTED_CLASSES: 1, LABEL_CLASSES: 3}
    assert set(meter.compute()) == {m.name for m in task.metrics} == {"miou", "pixel_acc"}


def test_class_counts_pool_over_batches() -> None:
    task = Segmentation(num_classes=4)
    meter = task.new_meter()
    for labels in (torch.tensor([[[0, 0]]]), torch.tensor([[[3, 3]]])):
        meter.update(_logits(labels, 4), labels)
    assert meter.diagnostics() == {PREDICTED_CLASSES: 2, LABEL_CLASSES: 2}

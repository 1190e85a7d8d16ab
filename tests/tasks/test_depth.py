"""Depth L1 loss and pooled abs/rel error and δ1 on hand-checked 2x2 depth maps."""

from __future__ import annotations

import pytest
import torch

from adapmtl_cli.errors import DataError, DiscoveryError
from adapmtl_cli.tasks.depth import Depth

# Three valid pixels (1, 2, 4 m) and one invalid (0) whose prediction must not count.
TARGET = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])
PRED = torch.tensor([[[[1.1, 2.0], [2.0, 5.0]]]])


def _metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    meter = Depth().new_meter()
    meter.update(pred, target)
    return meter.compute()


def test_perfect_prediction() -> None:
    assert _metrics(TARGET.clone(), TARGET) == {"abs_err": 0.0, "rel_err": 0.0, "delta1": 1.0}


def test_hand_computed_metrics_ignore_invalid_pixels() -> None:
    metrics = _metrics(PRED, TARGET)
    # errors 0.1, 0, 2 -> abs 2.1/3; relative 0.1, 0, 0.5 -> 0.6/3; ratios 1.1, 1, 2 -> 2 of 3 below 1.25.
    assert metrics["abs_err"] == pytest.approx(0.7)
    assert metrics["rel_err"] == pytest.approx(0.2)
    assert metrics["delta1"] == pytest.approx(2 / 3)


def test_delta1_threshold_is_strict_and_nonpositive_predictions_miss() -> None:
    target = torch.tensor([[[[4.0, 2.0]]]])
    pred = torch.tensor([[[[5.0, -1.0]]]])
    metrics = _metrics(pred, target)
    assert metrics["delta1"] == 0.0
    assert metrics["abs_err"] == pytest.approx(2.0)


def test_loss_is_mean_l1_over_valid_pixels() -> None:
    pred = PRED.clone().requires_grad_()
    loss = Depth().loss(pred, TARGET)
    assert loss.item() == pytest.approx(0.7)
    loss.backward()
    assert pred.grad is not None
    assert pred.grad.flatten().tolist() == pytest.approx([1 / 3, 0.0, -1 / 3, 0.0])


def test_no_valid_pixel_gives_zero_loss_with_grad() -> None:
    pred = torch.randn(2, 1, 3, 3, requires_grad=True)
    loss = Depth().loss(pred, torch.zeros(2, 1, 3, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and (pred.grad == 0).all()


def test_streaming_pools_pixels_not_batch_means() -> None:
    meter = Depth().new_meter()
    meter.update(PRED, TARGET)
    meter.update(torch.full((1, 1, 2, 2), 3.0), torch.tensor([[[[3.0, 0.0], [0.0, 0.0]]]]))
    # 4 valid pixels in all: abs errors 0.1, 0, 2, 0 -> 2.1/4 (a mean of batch means would give 0.35).
    assert meter.compute()["abs_err"] == pytest.approx(2.1 / 4)


def test_streaming_two_batches_equals_one_big_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 1, 5, 6, generator=gen) * 5
    target = torch.rand(4, 1, 5, 6, generator=gen) * 5 * (torch.rand(4, 1, 5, 6, generator=gen) > 0.3)
    streamed = Depth().new_meter()
    streamed.update(pred[:3], target[:3])
    streamed.update(pred[3:], target[3:])
    whole = _metrics(pred, target)
    assert streamed.compute() == pytest.approx(whole, rel=1e-6)


def test_bf16_and_lower_resolution_predictions_are_accepted() -> None:
    target = torch.full((2, 1, 8, 8), 2.0)
    pred = torch.full((2, 1, 2, 2), 2.0, dtype=torch.bfloat16, requires_grad=True)
    assert _metrics(pred, target) == {"abs_err": 0.0, "rel_err": 0.0, "delta1": 1.0}
    loss = Depth().loss(pred, target)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and pred.grad.dtype == torch.bfloat16


def test_target_without_channel_dim_is_accepted() -> None:
    assert _metrics(PRED, TARGET[:, 0]) == _metrics(PRED, TARGET)


def test_channel_mismatch_raises_discovery_error() -> None:
    with pytest.raises(DiscoveryError) as info:
        Depth().loss(torch.randn(2, 3, 24, 32), torch.ones(2, 1, 24, 32))
    assert str(info.value) == "task 'depth' expects 1 output channel, got 3 (2,3,24,32); check --outputs"


def test_batch_mismatch_and_bad_rank_raise_discovery_error() -> None:
    with pytest.raises(DiscoveryError, match="batch size 4 but its target has 2"):
        Depth().loss(torch.randn(4, 1, 2, 2), torch.ones(2, 1, 2, 2))
    with pytest.raises(DiscoveryError, match=r"expects a float output \(B,1,h,w\), got \(2,2,2\)"):
        Depth().loss(torch.randn(2, 2, 2), torch.ones(2, 1, 2, 2))


def test_meter_without_valid_pixels_raises() -> None:
    meter = Depth().new_meter()
    meter.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(DataError, match="no valid pixel"):
        meter.compute()

"""Normal cosine loss and pooled angular-error meter, including the histogram median's accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapmtl_cli.errors import DataError, DiscoveryError
from adapmtl_cli.tasks.normal import Normal

ANGLES = [0.0, 10.0, 20.0, 40.0]


def _tilted(angles_deg: list[float], scale: float = 1.0) -> torch.Tensor:
    """A (1, 3, 1, N) map of vectors tilted from +z towards +x by each angle."""
    rad = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    vectors = torch.stack([rad.sin(), torch.zeros_like(rad), rad.cos()]) * scale
    return vectors.float().view(1, 3, 1, -1)


def _up(n: int) -> torch.Tensor:
    return _tilted([0.0] * n)


def _metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    meter = Normal().new_meter()
    meter.update(pred, target)
    return meter.compute()


def _random_normals(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen), dim=1)


def test_perfect_prediction() -> None:
    target = _random_normals(torch.Generator().manual_seed(0), 2, 3, 4, 4)
    assert _metrics(target.clone(), target) == {
        "mean_angle": 0.0,
        "median_angle": 0.0,
        "within_11_25": 1.0,
        "within_22_5": 1.0,
        "within_30": 1.0,
    }


def test_hand_computed_angles_ignore_scale() -> None:
    metrics = _metrics(_tilted(ANGLES, scale=3.0), _up(4))
    assert metrics["mean_angle"] == pytest.approx(17.5, abs=1e-4)
    assert metrics["median_angle"] == pytest.approx(15.0, abs=0.01)
    assert metrics["within_11_25"] == 0.5
    assert metrics["within_22_5"] == 0.75
    assert metrics["within_30"] == 0.75


def test_invalid_pixels_are_ignored() -> None:
    target = torch.cat([_up(4), torch.zeros(1, 3, 1, 2)], dim=3)
    pred = torch.cat([_tilted(ANGLES), _tilted([170.0, 90.0])], dim=3)
    assert _metrics(pred, target) == pytest.approx(_metrics(_tilted(ANGLES), _up(4)))
    assert Normal().loss(pred, target).item() == pytest.approx(Normal().loss(_tilted(ANGLES), _up(4)).item())


def test_loss_is_one_minus_mean_cosine() -> None:
    pred = _tilted(ANGLES, scale=2.0).requires_grad_()
    loss = Normal().loss(pred, _up(4))
    expected = 1 - sum(math.cos(math.radians(a)) for a in ANGLES) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_no_valid_pixel_gives_zero_loss_with_grad() -> None:
    pred = torch.randn(2, 3, 3, 3, requires_grad=True)
    loss = Normal().loss(pred, torch.zeros(2, 3, 3, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and (pred.grad == 0).all()


def test_zero_prediction_has_finite_loss_and_grad() -> None:
    pred = torch.zeros(1, 3, 2, 2, requires_grad=True)
    loss = Normal().loss(pred, _up(4).view(1, 3, 2, 2))
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_histogram_median_is_within_half_a_bin_of_the_exact_median() -> None:
    gen = torch.Generator().manual_seed(3)
    for count in (101, 100):
        target = _random_normals(gen, 1, 3, 1, count)
        pred = _random_normals(gen, 1, 3, 1, count)
        cos = (pred.double() * target.double()).sum(1).clamp(-1, 1)
        exact = float(np.median(np.degrees(np.arccos(cos.numpy()))))
        assert _metrics(pred, target)["median_angle"] == pytest.approx(exact, abs=0.005 + 1e-6)


def test_streaming_two_batches_equals_one_big_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    target = _random_normals(gen, 4, 3, 5, 6) * (torch.rand(4, 1, 5, 6, generator=gen) > 0.2)
    pred = torch.randn(4, 3, 5, 6, generator=gen)
    streamed = Normal().new_meter()
    streamed.update(pred[:1], target[:1])
    streamed.update(pred[1:], target[1:])
    assert streamed.compute() == pytest.approx(_metrics(pred, target), rel=1e-6)


def test_bf16_and_lower_resolution_predictions_are_accepted() -> None:
    target = _up(1).expand(2, 3, 8, 8)
    pred = _up(1).expand(2, 3, 2, 2).bfloat16().requires_grad_()
    metrics = _metrics(pred, target)
    assert metrics["mean_angle"] == 0.0 and metrics["within_11_25"] == 1.0
    loss = Normal().loss(pred, target)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()


def test_channel_mismatch_raises_discovery_error() -> None:
    with pytest.raises(DiscoveryError) as info:
        Normal().loss(torch.randn(2, 1, 24, 32), torch.ones(2, 3, 24, 32))
    assert str(info.value) == "task 'normal' expects 3 output channels, got 1 (2,1,24,32); check --outputs"


def test_batch_mismatch_raises_discovery_error() -> None:
    with pytest.raises(DiscoveryError, match="batch size 1 but its target has 2"):
        Normal().new_meter().update(torch.randn(1, 3, 2, 2), torch.ones(2, 3, 2, 2))


def test_meter_without_valid_pixels_raises() -> None:
    meter = Normal().new_meter()
    meter.update(torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(DataError, match="no valid pixel"):
        meter.compute()

"""Surface normals: cosine loss, and angular-error statistics pooled over a split's valid pixels.

A pixel is valid when its ground-truth vector is not all zeros. Prediction and ground truth are L2-normalised
and the per-pixel angle between them, in degrees, gives (over every valid pixel of the split):

- ``mean_angle``: exact mean (a running sum);
- ``median_angle``: read from a histogram with 0.01° bins over [0°, 180°], so memory stays fixed (18,000
  counters) however large the split. The median element's bin midpoint is returned, clamped to the smallest
  and largest angle seen, so it is within 0.005° (half a bin) of the exact median and exactly 0 for a
  perfect prediction. For an even count it averages the two middle elements, as ``numpy.median`` does;
- ``within_11_25``, ``within_22_5``, ``within_30``: exact fraction of pixels with an angle strictly below
  11.25°, 22.5° and 30°.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from adapmtl_cli.errors import DataError
from adapmtl_cli.tasks.base import MetricMeter, MetricSpec
from adapmtl_cli.tasks.checks import dense_output, map_target
from adapmtl_cli.tasks.registry import register_task

_NAME = "normal"
_BIN_DEG = 0.01
_BINS = 18_000
_THRESHOLDS = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}


def _align(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-length fp32 ``pred`` and ``target`` at the target's size, and the ``(B, H, W)`` valid mask."""
    target = map_target(_NAME, target, 3)
    pred = dense_output(_NAME, pred, target, 3)
    target = target.to(device=pred.device, dtype=torch.float32)
    valid = (target != 0).any(dim=1)
    # Normalising the ground truth too keeps slightly non-unit stored normals from biasing the cosine.
    return F.normalize(pred, dim=1), F.normalize(target, dim=1), valid


@register_task(_NAME)
@dataclass(frozen=True)
class Normal:
    """Per-pixel unit surface normal; an all-zero ground-truth vector marks a pixel without one."""

    name: str = _NAME
    channels: ClassVar[int] = 3
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("mean_angle", higher_is_better=False, unit="deg"),
        MetricSpec("median_angle", higher_is_better=False, unit="deg"),
        MetricSpec("within_11_25", higher_is_better=True, unit="fraction"),
        MetricSpec("within_22_5", higher_is_better=True, unit="fraction"),
        MetricSpec("within_30", higher_is_better=True, unit="fraction"),
    )

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """1 - mean cosine over valid pixels; 0 (still attached to ``pred``) when there are none."""
        p, g, valid = _align(pred, target)
        cos = (p * g).sum(dim=1)
        total = torch.where(valid, 1 - cos, torch.zeros_like(cos)).sum()
        return total / valid.sum().clamp_min(1) + p.sum() * 0

    def new_meter(self) -> MetricMeter:
        return _AngleMeter()


def _angles_deg(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Angle between unit vectors along dim 1, in degrees.

    Kahan's 2·atan2(|p - g|, |p + g|) instead of acos(p · g): acos loses all precision near 0°, where fp32
    cosines round to 1 and angles below about 0.03° cannot be told apart; this form is exact for p == g.
    """
    half = torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1))
    return torch.rad2deg(2 * half)


class _AngleMeter:
    """Streams an angle histogram, a running sum, extremes and threshold counts over valid pixels."""

    def __init__(self) -> None:
        self.count = 0
        self.angle_sum = 0.0
        self.smallest = math.inf
        self.largest = -math.inf
        self.hits = dict.fromkeys(_THRESHOLDS, 0)
        self.histogram = torch.zeros(_BINS, dtype=torch.long)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, g, valid = _align(pred.detach(), target)
        angles = _angles_deg(p, g)[valid]
        if angles.numel() == 0:
            return
        self.count += angles.numel()
        self.angle_sum += float(angles.sum())
        self.smallest = min(self.smallest, float(angles.min()))
        self.largest = max(self.largest, float(angles.max()))
        for key, limit in _THRESHOLDS.items():
            self.hits[key] += int((angles < limit).sum())
        bins = (angles / _BIN_DEG).long().clamp_(0, _BINS - 1)
        self.histogram += torch.bincount(bins, minlength=_BINS).cpu()

    def compute(self) -> dict[str, float]:
        """The pooled metrics; raises ``DataError`` if no valid pixel was seen."""
        if self.count == 0:
            raise DataError("normal meter saw no valid pixel (all ground truth is zero); check the split")
        return {
            "mean_angle": self.angle_sum / self.count,
            "median_angle": self._median(),
            **{key: hits / self.count for key, hits in self.hits.items()},
        }

    def _median(self) -> float:
        cumulative = self.histogram.cumsum(0)
        # 1-based ranks of the two middle elements (equal when the count is odd).
        ranks = torch.tensor([(self.count + 1) // 2, self.count // 2 + 1])
        bins = torch.searchsorted(cumulative, ranks)
        middle = float(((bins.double() + 0.5) * _BIN_DEG).mean())
        return min(max(middle, self.smallest), self.largest)

"""Monocular depth: L1 loss, and absolute error, relative error and δ1 pooled over a split's valid pixels.

A pixel is valid when its ground truth is > 0 metres (0 marks missing depth). With ``p`` the prediction and
``g`` the ground truth, over every valid pixel of the split (sums, not per-batch means):

- ``abs_err`` = mean |p - g| in metres;
- ``rel_err`` = mean |p - g| / g;
- ``delta1`` = fraction of pixels with max(p/g, g/p) < 1.25, with ``p`` clamped to >= 1e-6 so that a zero or
  negative prediction counts as a miss instead of dividing by zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from adapmtl_cli.errors import DataError
from adapmtl_cli.tasks.base import MetricMeter, MetricSpec
from adapmtl_cli.tasks.checks import dense_output, map_target
from adapmtl_cli.tasks.registry import register_task

_NAME = "depth"
_DELTA1 = 1.25
_MIN_DEPTH = 1e-6


def _align(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred`` and ``target`` as fp32 ``(B, 1, H, W)`` at the target's size, after shape checks."""
    target = map_target(_NAME, target, 1)
    pred = dense_output(_NAME, pred, target, 1)
    return pred, target.to(device=pred.device, dtype=torch.float32)


@register_task(_NAME)
@dataclass(frozen=True)
class Depth:
    """Per-pixel depth in metres; ground truth 0 marks a pixel without depth."""

    name: str = _NAME
    channels: ClassVar[int] = 1
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("abs_err", higher_is_better=False, unit="m"),
        MetricSpec("rel_err", higher_is_better=False, unit=""),
        MetricSpec("delta1", higher_is_better=True, unit="fraction"),
    )

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean |p - g| over valid pixels; 0 (still attached to ``pred``) when there are none."""
        p, g = _align(pred, target)
        valid = g > 0
        total = torch.where(valid, (p - g).abs(), torch.zeros_like(p)).sum()
        return total / valid.sum().clamp_min(1) + p.sum() * 0

    def new_meter(self) -> MetricMeter:
        return _DepthMeter()


class _DepthMeter:
    """Streams error sums and counts over valid pixels, accumulated in Python floats across batches."""

    def __init__(self) -> None:
        self.count = 0
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.delta1_hits = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, g = _align(pred.detach(), target)
        valid = g > 0
        p, g = p[valid], g[valid]
        err = (p - g).abs()
        clamped = p.clamp_min(_MIN_DEPTH)
        ratio = torch.maximum(clamped / g, g / clamped)
        self.count += int(valid.sum())
        self.abs_sum += float(err.sum())
        self.rel_sum += float((err / g).sum())
        self.delta1_hits += int((ratio < _DELTA1).sum())

    def compute(self) -> dict[str, float]:
        """The pooled metrics; raises ``DataError`` if no valid pixel was seen."""
        if self.count == 0:
            raise DataError("depth meter saw no valid pixel (all ground truth is 0); check the split")
        return {
            "abs_err": self.abs_sum / self.count,
            "rel_err": self.rel_sum / self.count,
            "delta1": self.delta1_hits / self.count,
        }

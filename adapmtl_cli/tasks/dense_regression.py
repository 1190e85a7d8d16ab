"""One-channel dense regression kinds (``keypoints``, ``edges``) and the Taskonomy variants of the built-in kinds.

**keypoints, edges** (Taskonomy's ``keypoints2d`` and ``edge_texture``). Target: float32 ``(B, 1, H, W)``, in
[-1, 1] for Taskonomy (the AdaShare-family rescaling of the clipped raw values, see
``adapmtl_cli.data.taskonomy``); a NaN (or infinite) target marks an invalid pixel. Invalid targets are replaced
by 0 before any arithmetic and masked out, so neither the loss nor its gradient ever sees a NaN.

- loss: mean |p - g| over valid pixels; 0 (still attached to ``pred``) when there are none.
- ``l1``↓: the same, pooled over every valid pixel of the split (a sum and a count, not a mean of batch means), in
  target units: Taskonomy's published keypoint/edge errors are in this [-1, 1] space.

**Taskonomy variants** (not registered: the ``taskonomy`` adapter builds them; their ``name`` is the built-in one):

- :class:`WeightedSegmentation`: cross-entropy weighted per class by ``semseg_prior_factor.npy``; metrics mIoU↑,
  pixel acc↑ (the segmentation meter, by composition) plus ``weighted_ce``↓, Taskonomy's segmentation error:
  ``Σ w[g]·CE / Σ w[g]`` pooled over the split's labelled pixels (PyTorch's weighted-mean convention), in nats.
  Its ``diagnostics()`` are the segmentation meter's (classes predicted and labelled).
- :class:`TaskonomyNormal`: the normal kind plus ``cosine``↑, the mean cosine similarity between prediction and
  ground truth over valid pixels (both L2-normalised), pooled over the split. Taskonomy's headline normal metric.
- :class:`TaskonomyDepth`: the depth kind on Taskonomy's log-normalised depth ``log(1 + raw) / log(65536)``;
  ``abs_err`` is in that unitless [0, 1] space (not metres), and ``rel_err``/``delta1`` are ratios of log-depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.tasks.base import DiagnosticMeter, MetricMeter, MetricSpec
from adapmtl_cli.tasks.checks import dense_output, label_target, shape_text
from adapmtl_cli.tasks.depth import Depth
from adapmtl_cli.tasks.normal import Normal
from adapmtl_cli.tasks.registry import register_task
from adapmtl_cli.tasks.segmentation import Segmentation

# --- keypoints and edges --------------------------------------------------------------------------------


def _align_dense(name: str, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """fp32 ``pred``, ``target`` with invalid pixels set to 0, and the valid mask, all ``(B, 1, H, W)``."""
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if target.dim() != 4 or target.shape[1] != 1 or not target.is_floating_point():
        raise DataError(
            f"task {name!r} expects float targets (B,1,H,W) with NaN = invalid, got {shape_text(target)} "
            f"{target.dtype}; check the dataset adapter"
        )
    # "1 output channels" is the wording these kinds have always used; users and tests match it.
    pred = dense_output(name, pred, target, 1, channel_noun="channels")
    target = target.to(device=pred.device, dtype=torch.float32)
    valid = torch.isfinite(target)
    # Replaced before any arithmetic: 0 * NaN is NaN, so masking a NaN difference afterwards would still leak
    # NaN into the gradient.
    return pred, torch.where(valid, target, torch.zeros_like(target)), valid


@dataclass(frozen=True)
class DenseL1:
    """A one-channel dense regression map scored by L1 over valid (non-NaN) pixels."""

    name: str
    channels: ClassVar[int] = 1
    metrics: ClassVar[tuple[MetricSpec, ...]] = (MetricSpec("l1", higher_is_better=False, unit="target units"),)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean |p - g| over valid pixels; 0 (still attached to ``pred``) when there are none."""
        p, g, valid = _align_dense(self.name, pred, target)
        total = torch.where(valid, (p - g).abs(), torch.zeros_like(p)).sum()
        return total / valid.sum().clamp_min(1) + p.sum() * 0

    def new_meter(self) -> MetricMeter:
        return _L1Meter(self.name)


@register_task("keypoints")
@dataclass(frozen=True)
class Keypoints(DenseL1):
    """Taskonomy ``keypoints2d``: a 2D keypoint (corner) response map, in [-1, 1]."""

    name: str = "keypoints"


@register_task("edges")
@dataclass(frozen=True)
class Edges(DenseL1):
    """Taskonomy ``edge_texture``: a texture edge (gradient magnitude) map, in [-1, 1]."""

    name: str = "edges"


class _L1Meter:
    """Streams the absolute-error sum and the valid-pixel count, in Python numbers across batches."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.abs_sum = 0.0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, g, valid = _align_dense(self.name, pred.detach(), target)
        self.count += int(valid.sum())
        self.abs_sum += float((p - g).abs()[valid].sum())

    def compute(self) -> dict[str, float]:
        """``l1`` over everything seen; raises ``DataError`` if no valid pixel was seen."""
        if self.count == 0:
            raise DataError(f"{self.name} meter saw no valid pixel (all targets are NaN); check the split")
        return {"l1": self.abs_sum / self.count}


# --- Taskonomy segmentation -----------------------------------------------------------------------------


def _align_labels(name: str, pred: torch.Tensor, target: torch.Tensor, channels: int) -> tuple[torch.Tensor, ...]:
    """fp32 logits at the target's size and the ``(B, H, W)`` int64 labels, after the segmentation checks."""
    target = label_target(name, target)
    logits = dense_output(name, pred, target, channels)
    return logits, target.to(device=logits.device, dtype=torch.long)


def _weighted_ce_terms(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ w[g]·CE`` and ``Σ w[g]`` over the pixels whose label is a class (others weigh 0)."""
    valid = (labels >= 0) & (labels < weights.numel())
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits, safe, reduction="none")
    w = weights.to(logits.device)[safe] * valid
    return (w * ce).sum(), w.sum()


@dataclass(frozen=True)
class WeightedSegmentation:
    """Segmentation with per-class loss weights (Taskonomy's ``semseg_prior_factor.npy``).

    Args:
        num_classes: number of classes (17 for Taskonomy: background + 16 objects).
        class_weights: one non-negative weight per class; empty means all 1 (plain cross-entropy).
        ignore_index: the label of pixels that count neither in the loss nor in the metrics.
    """

    num_classes: int = 17
    class_weights: tuple[float, ...] = ()
    ignore_index: int = -1

    name: str = "segmentation"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        *Segmentation.metrics,
        MetricSpec("weighted_ce", higher_is_better=False, unit="nats"),
    )

    def __post_init__(self) -> None:
        Segmentation(self.num_classes, self.ignore_index, self.name)  # its ConfigErrors for bad counts/labels
        weights = self.class_weights
        if weights and (
            len(weights) != self.num_classes
            or not all(isinstance(w, float | int) and math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights) <= 0
        ):
            raise ConfigError(
                f"segmentation class_weights must be {self.num_classes} finite non-negative numbers, not all 0; "
                f"got {weights!r}"
            )

    @property
    def channels(self) -> int:
        return self.num_classes

    def weights(self) -> torch.Tensor:
        """The class weights as a float32 vector (all 1 when none were given)."""
        return torch.tensor(self.class_weights or (1.0,) * self.num_classes, dtype=torch.float32)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``Σ w[g]·CE / Σ w[g]`` over labelled pixels; 0 (still attached to ``pred``) when their weight is 0.

        Equal to ``F.cross_entropy(..., weight=w, ignore_index=...)``, except that labels outside
        ``[0, num_classes)`` are skipped (never a device assert) and no labelled pixel gives 0, not NaN.
        """
        logits, labels = _align_labels(self.name, pred, target, self.num_classes)
        total, weight = _weighted_ce_terms(logits, labels, self.weights())
        return total / weight.clamp_min(1e-12) + logits.sum() * 0

    def new_meter(self) -> MetricMeter:
        base = Segmentation(self.num_classes, self.ignore_index, self.name).new_meter()
        return _WeightedSegmentationMeter(self, base)


class _WeightedSegmentationMeter:
    """The segmentation meter's mIoU and pixel accuracy, plus the pooled weighted cross-entropy."""

    def __init__(self, task: WeightedSegmentation, base: MetricMeter) -> None:
        self.task = task
        self.base = base
        self.weights = task.weights()
        self.ce_sum = 0.0
        self.weight_sum = 0.0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.base.update(pred, target)  # first: it rejects labels outside the classes with a DataError
        logits, labels = _align_labels(self.task.name, pred.detach(), target, self.task.num_classes)
        total, weight = _weighted_ce_terms(logits.double(), labels, self.weights.double())
        self.ce_sum += float(total)
        self.weight_sum += float(weight)

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_acc`` and ``weighted_ce``; raises ``DataError`` if nothing could be scored."""
        metrics = self.base.compute()
        if self.weight_sum <= 0:
            raise DataError(f"{self.task.name} meter saw only pixels of classes weighted 0; check the class weights")
        return {**metrics, "weighted_ce": self.ce_sum / self.weight_sum}

    def diagnostics(self) -> dict[str, float]:
        """The segmentation meter's diagnostics: distinct classes predicted and labelled."""
        return self.base.diagnostics() if isinstance(self.base, DiagnosticMeter) else {}


# --- Taskonomy normal and depth -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskonomyNormal(Normal):
    """Surface normals with Taskonomy's mean cosine similarity as an extra metric."""

    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        *Normal.metrics,
        MetricSpec("cosine", higher_is_better=True, unit="cosine"),
    )

    def new_meter(self) -> MetricMeter:
        return _CosineMeter(self.name, Normal.new_meter(self))


class _CosineMeter:
    """The angle meter plus the sum of per-pixel cosines over valid pixels."""

    def __init__(self, name: str, base: MetricMeter) -> None:
        self.name = name
        self.base = base
        self.count = 0
        self.cos_sum = 0.0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.base.update(pred, target)  # first: it checks the shapes
        p = dense_output(self.name, pred.detach(), target, 3)
        g = target.to(device=p.device, dtype=torch.float32)
        valid = (g != 0).any(dim=1)
        cos = (F.normalize(p, dim=1) * F.normalize(g, dim=1)).sum(dim=1)[valid].clamp(-1.0, 1.0)
        self.count += cos.numel()
        self.cos_sum += float(cos.double().sum())

    def compute(self) -> dict[str, float]:
        metrics = self.base.compute()  # raises DataError when no valid pixel was seen
        return {**metrics, "cosine": self.cos_sum / self.count}


@dataclass(frozen=True)
class TaskonomyDepth(Depth):
    """Depth on Taskonomy's log-normalised scale ``log(1 + raw) / log(65536)`` in [0, 1]; 0 = invalid."""

    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("abs_err", higher_is_better=False, unit="log-normalised depth"),
        MetricSpec("rel_err", higher_is_better=False, unit=""),
        MetricSpec("delta1", higher_is_better=True, unit="fraction"),
    )

"""Semantic segmentation: cross-entropy loss, and mIoU and pixel accuracy from a split-wide confusion matrix.

Metric conventions (both reported as fractions in [0, 1]):

- One ``C x C`` confusion matrix is accumulated over every valid pixel of the split (labels in ``[0, C)``;
  ``ignore_index`` pixels are skipped), so every pixel weighs the same whatever its batch.
- ``miou``: IoU_c = TP / (TP + FP + FN), averaged over the classes that occur in the ground truth or in the
  prediction. A class absent from both has IoU 0/0 and is left out. Every other class counts, including
  those with IoU 0; this is the standard (MTAN/LibMTL-style ``nanmean``) convention.
  AdaShare, DiSparse and the AdapMTL code instead average only over classes with TP > 0. That drops the
  classes the model gets entirely wrong and inflates mIoU, so their numbers are not comparable with ours.
  Relative scores (Δ_T) stay meaningful as long as dense and pruned models are measured the same way.
- ``pixel_acc``: correctly labelled valid pixels / valid pixels (pooled, not a mean of batch accuracies).

The meter's ``diagnostics()`` (not metrics; see ``tasks.base``) count the classes predicted and labelled over the
valid pixels of the split, from the same matrix: one predicted class while the labels hold several is a collapse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.tasks.base import MetricMeter, MetricSpec, class_diagnostics
from adapmtl_cli.tasks.checks import dense_output, label_target
from adapmtl_cli.tasks.registry import register_task

_NAME = "segmentation"


def _align(pred: torch.Tensor, target: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred`` as fp32 logits at the target's size and ``target`` as ``(B, H, W)`` int64, after checks."""
    target = label_target(_NAME, target)
    pred = dense_output(_NAME, pred, target, channels, channel_hint="check --outputs or --num-classes")
    return pred, target.to(device=pred.device, dtype=torch.long)


@register_task(_NAME)
@dataclass(frozen=True)
class Segmentation:
    """Per-pixel classification into ``num_classes`` classes; ``ignore_index`` marks unlabelled pixels.

    Args:
        num_classes: number of classes, i.e. the output channels the model must produce.
        ignore_index: the label of pixels that count neither in the loss nor in the metrics.
    """

    num_classes: int = 13
    ignore_index: int = -1

    name: str = _NAME
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("miou", higher_is_better=True, unit="fraction"),
        MetricSpec("pixel_acc", higher_is_better=True, unit="fraction"),
    )

    def __post_init__(self) -> None:
        if type(self.num_classes) is not int or self.num_classes < 2:
            raise ConfigError(f"segmentation needs num_classes >= 2, got {self.num_classes!r}; set --num-classes")
        if 0 <= self.ignore_index < self.num_classes:
            raise ConfigError(
                f"segmentation ignore_index {self.ignore_index!r} is a real class "
                f"(0..{self.num_classes - 1}); use -1 or a label >= num_classes"
            )

    @property
    def channels(self) -> int:
        return self.num_classes

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over valid pixels; 0 (still attached to ``pred``) when there are none.

        Labels outside ``[0, num_classes)`` are treated as ignored here so that a bad label never trips a CUDA
        device assert mid-training; the meter reports them as a ``DataError`` instead.
        """
        logits, labels = _align(pred, target, self.num_classes)
        valid = (labels >= 0) & (labels < self.num_classes)
        # reduction="mean" returns NaN when every pixel is ignored; sum / count returns 0.
        safe = torch.where(valid, labels, torch.full_like(labels, -100))
        total = F.cross_entropy(logits, safe, ignore_index=-100, reduction="sum")
        return total / valid.sum().clamp_min(1) + logits.sum() * 0

    def new_meter(self) -> MetricMeter:
        return _ConfusionMeter(self.num_classes, self.ignore_index)


class _ConfusionMeter:
    """Streams a ``C x C`` confusion matrix (rows = ground truth, columns = prediction) over a split."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        logits, labels = _align(pred.detach(), target, self.num_classes)
        keep = labels != self.ignore_index
        gt = labels[keep]
        if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= self.num_classes):
            bad = gt[(gt < 0) | (gt >= self.num_classes)]
            raise DataError(
                f"segmentation target holds label {int(bad[0])!r} outside 0..{self.num_classes - 1} "
                f"(ignore label {self.ignore_index}); fix the data or pass --num-classes"
            )
        guess = logits.argmax(dim=1)[keep]
        cells = torch.bincount(gt * self.num_classes + guess, minlength=self.num_classes**2)
        self.confusion += cells.cpu()

    def compute(self) -> dict[str, float]:
        """``miou`` and ``pixel_acc`` over everything seen; raises ``DataError`` if no pixel was labelled."""
        matrix = self.confusion.view(self.num_classes, self.num_classes).double()
        total = matrix.sum()
        if total == 0:
            raise DataError("segmentation meter saw no labelled pixel; check the split and the ignore label")
        tp = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean()
        return {"miou": float(miou), "pixel_acc": float(tp.sum() / total)}

    def diagnostics(self) -> dict[str, float]:
        """Distinct classes predicted and labelled over the valid pixels seen (``tasks.base`` keys)."""
        return class_diagnostics(self.confusion.view(self.num_classes, self.num_classes))

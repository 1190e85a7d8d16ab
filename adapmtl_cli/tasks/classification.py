"""Per-sample (image-level) task kinds: ``classification``, ``multilabel`` and ``regression``.

The model gives one vector per sample: ``(B, C)``, or ``(B, C, 1, 1)`` as a 1x1 convolution head leaves it.
Spatial outputs ``(B, C, h, w)`` with ``h * w > 1`` are refused rather than pooled, so that a dense head is never
silently mapped onto a per-sample task. Every metric is pooled over the whole split (sums and counts, never a
mean of batch means).

Targets, per sample (stacked by the data loader into a batch):

- ``classification``: an int64 scalar (or ``(1,)``) class id in ``[0, num_classes)``; ``ignore_index`` (-1) =
  unlabelled. Loss: cross-entropy. Metrics from one split-wide ``C x C`` confusion matrix (rows = truth):
  ``accuracy`` = correct / labelled samples; ``macro_f1`` = mean over classes of
  F1_c = 2 TP / (2 TP + FP + FN), over the classes present in the truth or the prediction (a class absent from
  both has F1 0/0 and is left out, as in ``sklearn.metrics.f1_score(average="macro")``). Its ``diagnostics()``
  (not metrics, see ``tasks.base``) count the classes predicted and labelled over the labelled samples.
- ``multilabel``: ``(L,)`` with 1 = present, 0 = absent, -1 = unknown (skipped by loss and metrics); int or float.
  A label is predicted present when its logit is > 0. Loss: binary cross-entropy with logits, averaged over
  known entries. ``accuracy`` = mean over labels of (TP + TN) / known entries of that label (labels never known
  are left out); ``macro_f1`` = mean over labels of F1_l, over labels with 2 TP + FP + FN > 0; when no label is
  positive in the truth nor predicted anywhere, there is nothing to get wrong and ``macro_f1`` is 1.
- ``regression``: float ``(K,)`` (or a scalar when ``K = 1``); NaN = missing (skipped by loss and metrics; the
  target is replaced before any arithmetic, so gradients stay finite). Loss: L1 (default) or MSE, averaged
  over known entries. ``mae`` = mean |p - t|, ``rmse`` = sqrt(mean (p - t)^2), both over every known entry of
  the split, in the target's unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.tasks.base import MetricMeter, MetricSpec, class_diagnostics
from adapmtl_cli.tasks.checks import shape_text, vector_output
from adapmtl_cli.tasks.registry import register_task


def _class_target(task: str, target: torch.Tensor) -> torch.Tensor:
    """Class-id targets as ``(B,)`` int64."""
    if target.dim() == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 1 or target.is_floating_point() or target.is_complex():
        raise DataError(
            f"task {task!r} expects one integer class id per sample (batch (B,)), got {shape_text(target)} "
            f"{target.dtype}; return torch.tensor(label) (int64) from the dataset"
        )
    return target.long()


@register_task("classification")
@dataclass(frozen=True)
class Classification:
    """One class out of ``num_classes`` per sample; ``ignore_index`` marks unlabelled samples.

    Args:
        num_classes: number of classes, i.e. the logits the model outputs per sample.
        ignore_index: the label of samples that count neither in the loss nor in the metrics.
    """

    num_classes: int = 2
    ignore_index: int = -1

    name: str = "classification"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("accuracy", higher_is_better=True, unit="fraction"),
        MetricSpec("macro_f1", higher_is_better=True, unit="fraction"),
    )

    def __post_init__(self) -> None:
        if type(self.num_classes) is not int or self.num_classes < 2:
            raise ConfigError(f"classification {self.name!r} needs num_classes >= 2, got {self.num_classes!r}")
        if type(self.ignore_index) is not int or 0 <= self.ignore_index < self.num_classes:
            raise ConfigError(
                f"classification {self.name!r} ignore_index {self.ignore_index!r} must be an int outside "
                f"0..{self.num_classes - 1}; use -1"
            )

    @property
    def channels(self) -> int:
        return self.num_classes

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over labelled samples; 0 (still attached to ``pred``) when there are none.

        Labels outside ``[0, num_classes)`` are skipped here so a bad label never trips a CUDA device assert;
        the meter reports them as a ``DataError``.
        """
        labels = _class_target(self.name, target)
        logits = vector_output(self.name, pred, self.num_classes, labels.shape[0])
        labels = labels.to(logits.device)
        valid = (labels >= 0) & (labels < self.num_classes)
        safe = torch.where(valid, labels, torch.full_like(labels, -100))
        total = F.cross_entropy(logits, safe, ignore_index=-100, reduction="sum")
        return total / valid.sum().clamp_min(1) + logits.sum() * 0

    def new_meter(self) -> MetricMeter:
        return _ClassMeter(self.name, self.num_classes, self.ignore_index)


class _ClassMeter:
    """Streams a ``C x C`` confusion matrix (rows = ground truth, columns = prediction) over a split."""

    def __init__(self, task: str, num_classes: int, ignore_index: int) -> None:
        self.task = task
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels = _class_target(self.task, target)
        logits = vector_output(self.task, pred.detach(), self.num_classes, labels.shape[0])
        labels = labels.to(logits.device)
        keep = labels != self.ignore_index
        truth = labels[keep]
        bad = truth[(truth < 0) | (truth >= self.num_classes)]
        if bad.numel():
            raise DataError(
                f"task {self.task!r} target holds class id {int(bad[0])!r} outside 0..{self.num_classes - 1} "
                f"(ignore label {self.ignore_index}); fix the data or num_classes"
            )
        guess = logits.argmax(dim=1)[keep]
        cells = torch.bincount(truth * self.num_classes + guess, minlength=self.num_classes**2)
        self.confusion += cells.cpu()

    def compute(self) -> dict[str, float]:
        """``accuracy`` and ``macro_f1``; raises ``DataError`` if no labelled sample was seen."""
        matrix = self.confusion.view(self.num_classes, self.num_classes).double()
        total = matrix.sum()
        if total == 0:
            raise DataError(f"task {self.task!r} meter saw no labelled sample; check the split and the ignore label")
        tp = matrix.diagonal()
        denom = matrix.sum(0) + matrix.sum(1)  # = 2 TP + FP + FN per class
        present = denom > 0
        f1 = (2 * tp[present] / denom[present]).mean()
        return {"accuracy": float(tp.sum() / total), "macro_f1": float(f1)}

    def diagnostics(self) -> dict[str, float]:
        """Distinct classes predicted and labelled over the labelled samples seen (``tasks.base`` keys)."""
        return class_diagnostics(self.confusion.view(self.num_classes, self.num_classes))


@register_task("multilabel")
@dataclass(frozen=True)
class Multilabel:
    """``num_labels`` independent yes/no labels per sample; -1 marks an unknown label.

    Args:
        num_labels: number of labels, i.e. the logits the model outputs per sample.
    """

    num_labels: int = 2

    name: str = "multilabel"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("accuracy", higher_is_better=True, unit="fraction"),
        MetricSpec("macro_f1", higher_is_better=True, unit="fraction"),
    )

    def __post_init__(self) -> None:
        if type(self.num_labels) is not int or self.num_labels < 1:
            raise ConfigError(f"multilabel {self.name!r} needs num_labels >= 1, got {self.num_labels!r}")

    @property
    def channels(self) -> int:
        return self.num_labels

    def _align(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if target.dim() == 1 and self.num_labels == 1:
            target = target[:, None]
        if target.dim() != 2 or target.shape[1] != self.num_labels or target.is_complex():
            raise DataError(
                f"task {self.name!r} expects targets (B,{self.num_labels}) of 1/0/-1, got {shape_text(target)}; "
                "check the dataset"
            )
        logits = vector_output(self.name, pred, self.num_labels, target.shape[0])
        return logits, target.to(device=logits.device, dtype=torch.float32)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE with logits averaged over known entries (0 or 1); 0 (still attached) when none is known."""
        logits, truth = self._align(pred, target)
        known = (truth == 0) | (truth == 1)
        safe = torch.where(known, truth, torch.zeros_like(truth))
        per_entry = F.binary_cross_entropy_with_logits(logits, safe, reduction="none")
        total = torch.where(known, per_entry, torch.zeros_like(per_entry)).sum()
        return total / known.sum().clamp_min(1) + logits.sum() * 0

    def new_meter(self) -> MetricMeter:
        return _MultilabelMeter(self)


class _MultilabelMeter:
    """Streams per-label TP, FP, FN and TN counts over the known entries of a split."""

    def __init__(self, task: Multilabel) -> None:
        self.task = task
        self.counts = torch.zeros(4, task.num_labels, dtype=torch.long)  # rows: TP, FP, FN, TN

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        logits, truth = self.task._align(pred.detach(), target)
        bad = truth[(truth != 0) & (truth != 1) & (truth != -1)]
        if bad.numel():
            raise DataError(
                f"task {self.task.name!r} target holds {float(bad[0])!r}; multilabel targets are 1 (present), "
                "0 (absent) or -1 (unknown)"
            )
        yes, no = truth == 1, truth == 0
        guess = logits > 0
        cells = torch.stack([yes & guess, no & guess, yes & ~guess, no & ~guess]).sum(dim=1)
        self.counts += cells.cpu()

    def compute(self) -> dict[str, float]:
        """``accuracy`` and ``macro_f1``; raises ``DataError`` if no known entry was seen."""
        tp, fp, fn, tn = self.counts.double()
        known = tp + fp + fn + tn
        if known.sum() == 0:
            raise DataError(f"task {self.task.name!r} meter saw no known label (all -1); check the split")
        seen = known > 0
        accuracy = ((tp + tn)[seen] / known[seen]).mean()
        denom = 2 * tp + fp + fn
        defined = denom > 0
        f1 = float((2 * tp[defined] / denom[defined]).mean()) if defined.any() else 1.0
        return {"accuracy": float(accuracy), "macro_f1": f1}


_REGRESSION_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class Regression:
    """``num_outputs`` real values per sample; NaN targets are missing.

    Args:
        num_outputs: values the model outputs per sample.
        loss_kind: ``"l1"`` (mean absolute error, default) or ``"mse"`` (mean squared error). The registry
            factory takes it as ``loss=...``; the field cannot be called ``loss``, which is the method.
    """

    num_outputs: int = 1
    loss_kind: str = "l1"

    name: str = "regression"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("mae", higher_is_better=False),
        MetricSpec("rmse", higher_is_better=False),
    )

    def __post_init__(self) -> None:
        if type(self.num_outputs) is not int or self.num_outputs < 1:
            raise ConfigError(f"regression {self.name!r} needs num_outputs >= 1, got {self.num_outputs!r}")
        if self.loss_kind not in _REGRESSION_LOSSES:
            raise ConfigError(
                f"regression {self.name!r} loss {self.loss_kind!r} is unknown; use one of: "
                + ", ".join(_REGRESSION_LOSSES)
            )

    @property
    def channels(self) -> int:
        return self.num_outputs

    def _align(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if target.dim() == 1 and self.num_outputs == 1:
            target = target[:, None]
        if target.dim() != 2 or target.shape[1] != self.num_outputs or not target.is_floating_point():
            raise DataError(
                f"task {self.name!r} expects float targets (B,{self.num_outputs}), got {shape_text(target)} "
                f"{target.dtype}; check the dataset"
            )
        p = vector_output(self.name, pred, self.num_outputs, target.shape[0])
        return p, target.to(device=p.device, dtype=torch.float32)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean L1 or squared error over known entries; 0 (still attached to ``pred``) when none is known.

        Non-finite targets count as missing here (never NaN gradients); the meter reports infinities.
        """
        p, t = self._align(pred, target)
        known = torch.isfinite(t)
        # Replace missing targets *before* subtracting: where() after the fact would still back-propagate
        # 0 * NaN = NaN through the masked branch.
        err = p - torch.where(known, t, torch.zeros_like(t))
        per_entry = err.abs() if self.loss_kind == "l1" else err.square()
        total = torch.where(known, per_entry, torch.zeros_like(per_entry)).sum()
        return total / known.sum().clamp_min(1) + p.sum() * 0

    def new_meter(self) -> MetricMeter:
        return _RegressionMeter(self)


class _RegressionMeter:
    """Streams the count, sum of absolute errors and sum of squared errors over known entries (float64)."""

    def __init__(self, task: Regression) -> None:
        self.task = task
        self.count = 0
        self.abs_sum = 0.0
        self.sq_sum = 0.0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t = self.task._align(pred.detach(), target)
        if torch.isinf(t).any():
            raise DataError(f"task {self.task.name!r} target holds an infinite value; use NaN for a missing value")
        known = ~torch.isnan(t)
        err = (p[known] - t[known]).double()
        self.count += int(known.sum())
        self.abs_sum += float(err.abs().sum())
        self.sq_sum += float(err.square().sum())

    def compute(self) -> dict[str, float]:
        """``mae`` and ``rmse``; raises ``DataError`` if no known target was seen."""
        if self.count == 0:
            raise DataError(f"task {self.task.name!r} meter saw no known target (all NaN); check the split")
        return {"mae": self.abs_sum / self.count, "rmse": math.sqrt(self.sq_sum / self.count)}


@register_task("regression")
def regression(num_outputs: int = 1, loss: str = "l1", name: str = "regression") -> Regression:
    """The ``regression`` kind as users declare it: ``get_task("regression", num_outputs=2, loss="mse")``."""
    return Regression(num_outputs=num_outputs, loss_kind=loss, name=name)

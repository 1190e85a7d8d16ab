"""The task contract: a loss, streaming metrics, and each metric's better direction.

A task owns how its prediction is compared with its target. Predictions arrive as the model produced them
(``(B, C, h, w)``, any float dtype); every task resizes them bilinearly to the target's spatial size and works in
fp32, so models with a lower output stride need no special handling.

**Diagnostics are not metrics.** A meter may also offer ``diagnostics()``: facts about the predictions that are
no score, today how many distinct classes a classifying meter saw predicted and labelled
(:data:`PREDICTED_CLASSES`, :data:`LABEL_CLASSES`; the segmentation and classification meters, and the Taskonomy
segmentation through them). They live in their own method, not in ``compute()``, so nothing that reads metrics
(``MetricSpec``, Δ_T/Δm/Δ_p, the metric tables, ``dense_metrics.json``, the finiteness check) ever sees them; the
evaluation collects them beside the metrics (``train.evaluate.evaluate_with_diagnostics``) and
``tasks.scores.collapse`` reads them. A meter without the method simply has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class MetricSpec:
    """One metric a task reports: its name, unit, and whether higher values are better."""

    name: str
    higher_is_better: bool
    unit: str = ""


@runtime_checkable
class MetricMeter(Protocol):
    """Accumulates a task's metrics over a whole split; ``compute`` pools every batch seen."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...


PREDICTED_CLASSES = "predicted_classes"
"""Diagnostic: distinct classes the model predicted over the labelled pixels (or samples) of the split."""
LABEL_CLASSES = "label_classes"
"""Diagnostic: distinct classes in the ground truth of those pixels (or samples)."""


@runtime_checkable
class DiagnosticMeter(MetricMeter, Protocol):
    """A meter that also reports diagnostics: counts about its predictions that are not metrics (no score)."""

    def diagnostics(self) -> dict[str, float]: ...


def class_diagnostics(confusion: torch.Tensor) -> dict[str, float]:
    """:data:`PREDICTED_CLASSES` and :data:`LABEL_CLASSES` of a ``C x C`` confusion matrix (rows = truth)."""
    predicted = int((confusion.sum(dim=0) > 0).sum())
    labelled = int((confusion.sum(dim=1) > 0).sum())
    return {PREDICTED_CLASSES: predicted, LABEL_CLASSES: labelled}


@runtime_checkable
class TaskSpec(Protocol):
    """A task kind: what the model must output for it, its loss and its metrics.

    The three attributes are read-only here, so a task may provide each as a (frozen dataclass) field, a
    class variable or a property.
    """

    @property
    def name(self) -> str:
        """The task's name in its dataset: the key of its target in each sample, of its output, of its metrics.

        Built-in kinds default to their registry key (``"segmentation"``); a dataset with two tasks of one kind
        names them apart (``Classification(name="left_digit")``).
        """
        ...

    @property
    def channels(self) -> int:
        """Number of output channels the model must produce for this task."""
        ...

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """The metrics ``new_meter().compute()`` returns, in display order."""
        ...

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def new_meter(self) -> MetricMeter: ...

"""The task contract: a loss, streaming metrics, and each metric's better direction.

A task owns how its prediction is compared with its target. Predictions arrive as the model produced them
(``(B, C, h, w)``, any float dtype); every task resizes them bilinearly to the target's spatial size and works in
fp32, so models with a lower output stride need no special handling.
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

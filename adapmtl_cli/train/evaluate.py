"""Every task's metrics over a split, pooled over all its pixels, under the run's precision.

:func:`evaluate` gives the metrics (``{task: {metric: value}}``); :func:`evaluate_with_diagnostics` gives them
with the meters' diagnostics beside them (counts such as the classes predicted, which are not metrics: see
``tasks.base``), from the same single pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from adapmtl_cli.model.outputs import OutputMapping
from adapmtl_cli.tasks.base import DiagnosticMeter, MetricMeter, TaskSpec
from adapmtl_cli.train.batches import to_device
from adapmtl_cli.train.device import autocast, autocast_dtype

Metrics = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Evaluation:
    """One pass over a split.

    Attributes:
        metrics: every task's metrics, as :func:`evaluate` returns them.
        diagnostics: the tasks whose meter has ``diagnostics()`` -> what it reported (never metrics).
    """

    metrics: Metrics
    diagnostics: Metrics


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    tasks: Sequence[TaskSpec],
    mapping: OutputMapping,
    device: torch.device,
    batch_size: int = 8,
    max_batches: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    precision: str = "auto",
) -> Metrics:
    """Every task's metrics over ``dataset`` (pooled over all pixels of the split), under ``precision``."""
    meters = _run(model, dataset, tasks, mapping, device, batch_size, max_batches, on_batch, precision)
    return {name: m.compute() for name, m in meters.items()}


@torch.no_grad()
def evaluate_with_diagnostics(
    model: torch.nn.Module,
    dataset: Dataset,
    tasks: Sequence[TaskSpec],
    mapping: OutputMapping,
    device: torch.device,
    batch_size: int = 8,
    max_batches: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    precision: str = "auto",
) -> Evaluation:
    """:func:`evaluate`'s metrics and, beside them, the diagnostics of every meter that has some."""
    meters = _run(model, dataset, tasks, mapping, device, batch_size, max_batches, on_batch, precision)
    return Evaluation(
        metrics={name: m.compute() for name, m in meters.items()},
        diagnostics={name: m.diagnostics() for name, m in meters.items() if isinstance(m, DiagnosticMeter)},
    )


def _run(
    model: torch.nn.Module,
    dataset: Dataset,
    tasks: Sequence[TaskSpec],
    mapping: OutputMapping,
    device: torch.device,
    batch_size: int,
    max_batches: int | None,
    on_batch: Callable[[int, int], None] | None,
    precision: str,
) -> dict[str, MetricMeter]:
    """Every task's meter after one pass over ``dataset`` in eval mode (the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    meters = {t.name: t.new_meter() for t in tasks}
    dtype = autocast_dtype(precision, device.type)
    for i, batch in enumerate(loader):
        if i >= total:
            break
        x, y = to_device(batch, device)
        with autocast(device, dtype):
            preds = mapping.select(model(x))
        for t in tasks:
            meters[t.name].update(preds[t.name], y[t.name])
        if on_batch:
            on_batch(i + 1, total)
    model.train(was_training)
    return meters

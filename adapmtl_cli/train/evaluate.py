"""Every task's metrics over a split, pooled over all its pixels, under the run's precision."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from adapmtl_cli.model.outputs import OutputMapping
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.train.batches import to_device
from adapmtl_cli.train.device import autocast, autocast_dtype


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
) -> dict[str, dict[str, float]]:
    """Every task's metrics over ``dataset`` (pooled over all pixels of the split), under ``precision``."""
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
    return {name: m.compute() for name, m in meters.items()}

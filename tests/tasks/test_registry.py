"""Every registered task's contract: name, channels, metrics, a finite differentiable loss, a meter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adapmtl_cli.tasks import TASKS, canonical_task_name, get_task
from adapmtl_cli.tasks.base import MetricMeter, TaskSpec

PER_SAMPLE = {"classification", "multilabel", "regression"}
"""Kinds whose outputs and targets have no spatial dimensions."""


def _random_target(name: str, gen: torch.Generator, channels: int) -> torch.Tensor:
    """A target in the dataset contract's format for ``name``, with some invalid pixels."""
    shape = (2, 6, 8)
    if name == "segmentation":
        return torch.randint(-1, channels, shape, generator=gen)
    if name == "depth":
        valid = torch.rand(2, 1, *shape[1:], generator=gen) > 0.2
        return torch.rand(2, 1, *shape[1:], generator=gen) * 5 * valid
    if name == "normal":
        mask = torch.rand(2, 1, *shape[1:], generator=gen) > 0.2
        return F.normalize(torch.randn(2, 3, *shape[1:], generator=gen), dim=1) * mask
    if name == "classification":
        return torch.tensor([channels - 1, -1])
    if name == "multilabel":
        return torch.randint(-1, 2, (2, channels), generator=gen)
    if name == "regression":
        target = torch.randn(2, channels, generator=gen)
        target[0, 0] = float("nan")
        return target
    if name in ("keypoints", "edges"):
        target = torch.rand(2, 1, *shape[1:], generator=gen) * 2 - 1
        target[torch.rand(2, 1, *shape[1:], generator=gen) < 0.2] = float("nan")
        return target
    pytest.fail(f"no random target for task {name!r}; extend _random_target")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_contract(name: str) -> None:
    task = TASKS[name]()
    assert isinstance(task, TaskSpec)
    assert task.name == name and canonical_task_name(name) == name
    assert type(get_task(name)) is type(task)
    assert isinstance(task.channels, int) and task.channels >= 1
    names = [metric.name for metric in task.metrics]
    assert names and len(names) == len(set(names))

    gen = torch.Generator().manual_seed(0)
    target = _random_target(name, gen, task.channels)
    spatial = () if name in PER_SAMPLE else (3, 4)
    pred = torch.randn(2, task.channels, *spatial, generator=gen, requires_grad=True)
    loss = task.loss(pred, target)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()

    meter = task.new_meter()
    assert isinstance(meter, MetricMeter)
    meter.update(pred.detach(), target)
    metrics = meter.compute()
    assert list(metrics) == names
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())

"""Tiny two-task batches and task losses shared by the method tests (segmentation + depth on HardShared)."""

from __future__ import annotations

import torch
from torch import nn

from adapmtl_cli.tasks import get_task

TASKS = {"segmentation": get_task("segmentation", num_classes=13), "depth": get_task("depth")}

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


def sample_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 16, 24, generator=g)
    y = {
        "segmentation": torch.randint(-1, 13, (2, 16, 24), generator=g),
        "depth": torch.rand(2, 1, 16, 24, generator=g) + 0.5,
    }
    return x, y


def task_losses(module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    out = module(batch[0])
    return {t: spec.loss(out[t], batch[1][t]) for t, spec in TASKS.items()}

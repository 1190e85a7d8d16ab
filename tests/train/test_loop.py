"""The fine-tuning loop on a ``Pruning``: precision, exact target."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from adapmtl_cli.api import Pruning
from adapmtl_cli.api import prepare as prepare_pruning
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks import get_task
from adapmtl_cli.train.events import StepInfo
from adapmtl_cli.train.loop import TrainConfig, finetune

pytest.register_assert_rewrite("fixtures_e2e")


pytest_plugins = ["fixtures_e2e"]


# --- precision ------------------------------------------------------------------------------------


class _Scenes(Dataset):
    """Eight random (image, {segmentation, depth}) pairs at 32x48."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(8, 3, 32, 48, generator=g)
        self.seg = torch.randint(0, 13, (8, 32, 48), generator=g)
        self.depth = torch.rand(8, 1, 32, 48, generator=g) + 0.5

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {"segmentation": self.seg[i], "depth": self.depth[i]}


def _finetune(precision: str, steps: int = 6) -> tuple[Pruning, StepInfo]:
    from tiny_models import HardShared

    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    data = _Scenes()
    specs = [get_task("segmentation", num_classes=13), get_task("depth")]
    pruning = prepare_pruning(
        model,
        data.x[:2],
        tasks=specs,
        sparsity=0.8,
        steps=steps,
        ramp_end=0.5,
        layer_scale="none",
        weighting="equal",
        threshold_lr=1e-2,
    )
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, seed=0, log_every=3, precision=precision)
    info = finetune(pruning, data, specs, cfg, device=torch.device("cpu"))
    return pruning, info


def test_bf16_on_the_cpu_trains_to_the_exact_target() -> None:
    pruning, info = _finetune("bf16")
    bf16_losses = info.task_losses
    assert info.step == 6 and info.sparsity is not None and abs(info.sparsity - 0.8) <= 0.001
    assert all(p.dtype == torch.float32 for p in pruning.model.parameters())  # autocast never casts the weights
    assert all(math.isfinite(v) for v in bf16_losses.values())
    _, fp32 = _finetune("fp32")
    assert fp32.task_losses != bf16_losses  # bf16 really ran: the numbers differ in their last bits


def test_fp16_on_the_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="--precision fp16 is not supported on cpu"):
        _finetune("fp16", steps=1)

"""Tiny multitask models, one sharing topology each, for fast tests of discovery, pruning and export.

Each takes ``(B, 3, H, W)`` images, has fewer than 20k parameters and runs in milliseconds at 32x48. Test
files import the classes directly (``from tiny_models import HardShared``); ``conftest.py`` also serves
seeded instances as fixtures. A topology that exposed a bug earns a new class here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

DEFAULT_TASKS: dict[str, int] = {"segmentation": 13, "depth": 1, "normal": 3}


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def _conv_head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, out_channels, 1),
    )


class HardShared(nn.Module):
    """Three-conv encoder shared by all tasks, then a small conv head per task; returns ``{task: map}``.

    Discovery should find ``encoder`` as the backbone and ``heads.<task>`` as the heads. Output stride 4.
    """

    def __init__(self, tasks: Mapping[str, int] | None = None, width: int = 8) -> None:
        super().__init__()
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.encoder = nn.Sequential(
            _conv_bn_relu(3, width, 2),
            _conv_bn_relu(width, 2 * width, 2),
            _conv_bn_relu(2 * width, 2 * width),
        )
        self.heads = nn.ModuleDict({t: _conv_head(2 * width, width, c) for t, c in self.tasks.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feat = self.encoder(x)
        return {t: head(feat) for t, head in self.heads.items()}


class Branched(nn.Module):
    """Shared stem, then branch A (every task but ``normal``) and branch B (``normal`` only), then heads.

    Discovery should find ``stem`` as the backbone, ``branch_a`` as a branch shared by depth and
    segmentation, and ``branch_b`` plus ``heads.normal`` as normal's own parameters. Output stride 4.
    """

    def __init__(self, tasks: Mapping[str, int] | None = None, width: int = 8) -> None:
        super().__init__()
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.stem = _conv_bn_relu(3, width, 2)
        self.branch_a = nn.Sequential(_conv_bn_relu(width, 2 * width, 2), _conv_bn_relu(2 * width, 2 * width))
        self.branch_b = _conv_bn_relu(width, width, 2)
        self.branch_of = {t: "b" if t == "normal" else "a" for t in self.tasks}
        self.heads = nn.ModuleDict(
            {t: _conv_head(width if self.branch_of[t] == "b" else 2 * width, width, c) for t, c in self.tasks.items()}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.stem(x)
        feats = {"a": self.branch_a(shared), "b": self.branch_b(shared)}
        return {t: head(feats[self.branch_of[t]]) for t, head in self.heads.items()}


class _AttentionEncoder(nn.Module):
    """Shared convs plus, per task, a sigmoid attention conv that gates the shared features (MTAN-like)."""

    def __init__(self, tasks: Mapping[str, int], width: int) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, width, 2)
        self.block = _conv_bn_relu(width, 2 * width, 2)
        self.att = nn.ModuleDict(
            {t: nn.Sequential(nn.Conv2d(2 * width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width)) for t in tasks}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feat = self.block(self.stem(x))
        return {t: torch.sigmoid(att(feat)) * feat for t, att in self.att.items()}


class TaskAttention(nn.Module):
    """MTAN-like: ``encoder.att[task]`` masks the shared encoder features per task, then ``heads[task]``.

    Discovery should find ``encoder.stem`` and ``encoder.block`` as the backbone, and ``encoder.att.<task>``
    as task-specific parameters inside the encoder. Output stride 4.
    """

    def __init__(self, tasks: Mapping[str, int] | None = None, width: int = 8) -> None:
        super().__init__()
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.encoder = _AttentionEncoder(self.tasks, width)
        self.heads = nn.ModuleDict({t: _conv_head(2 * width, width, c) for t, c in self.tasks.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        gated = self.encoder(x)
        return {t: head(gated[t]) for t, head in self.heads.items()}


class TupleOutput(HardShared):
    """Like :class:`HardShared`, but returns ``([map per task, in tasks order], aux)`` (nested positional).

    ``aux`` is the globally pooled shared feature, shape ``(B, 2 * width)``: an output no task owns.
    """

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:  # type: ignore[override]
        feat = self.encoder(x)
        return [head(feat) for head in self.heads.values()], feat.mean(dim=(2, 3))


class _ChannelLinearHead(nn.Module):
    """1x1 conv, ReLU, then an ``nn.Linear`` over channels applied per pixel through a permute."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.conv(x)).permute(0, 2, 3, 1)
        return self.fc(y).permute(0, 3, 1, 2)


class WithLinear(HardShared):
    """Like :class:`HardShared`, but ``heads[linear_task]`` ends in an ``nn.Linear`` over channels.

    The output is still ``{task: (B, C, h, w)}``; pruning must treat the Linear's weight like a conv's.
    """

    def __init__(self, tasks: Mapping[str, int] | None = None, width: int = 8, linear_task: str = "normal") -> None:
        super().__init__(tasks, width)
        self.heads[linear_task] = _ChannelLinearHead(2 * width, width, self.tasks[linear_task])


TINY_MODELS: dict[str, type[nn.Module]] = {
    "hard_shared": HardShared,
    "branched": Branched,
    "task_attention": TaskAttention,
    "tuple_output": TupleOutput,
    "with_linear": WithLinear,
}
"""Fixture name -> class; every class builds with no arguments."""

DICT_OUTPUT_MODELS: tuple[str, ...] = ("hard_shared", "branched", "task_attention", "with_linear")
"""The topologies whose forward returns ``{task: map}``."""

"""MobileNetV2 multitask reference model: an inverted-residual backbone with one ASPP-lite head per task.

The backbone is MobileNetV2 (Sandler et al. 2018) without its classifier, as in AdapMTL (method.md §4):
a stride-2 3x3 stem, inverted-residual stages ``(t, c, n, s)`` (expand 1x1 by ``t``, depthwise 3x3, linear
1x1 bottleneck, identity shortcut when stride is 1 and channels match), then a 1x1 conv to ``last_channels``.
``output_stride`` below 32 turns the later strides into dilations, DeepLabv3-style, for small inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.models.heads import build_heads, init_weights_, resolve_tasks, run_heads

STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
"""MobileNetV2's inverted-residual stages as ``(expansion t, channels c, repeats n, first stride s)``."""


def _round_channels(channels: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor`` without dropping more than 10% (MobileNet's channel rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (depthwise 3x3, maybe strided or dilated), project (1x1, no activation)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu(in_channels, hidden, 1))
        layers += [
            nn.Sequential(
                nn.Conv2d(hidden, hidden, 3, stride, dilation, dilation=dilation, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
            ),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # ``use_residual`` is fixed at construction, so exporters see one static branch.
        if self.use_residual:
            return x + self.block(x)
        out: Tensor = self.block(x)
        return out


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 feature extractor ending in a 1x1 conv to ``last_channels``.

    Args:
        width_mult: scales every stage's channels (rounded to multiples of 8).
        depth_mult: scales each stage's repeat count (at least one block per stage).
        stages: the ``(t, c, n, s)`` table; pass a prefix of :data:`STAGES` for a shallower net.
        last_channels: channels of the final 1x1 conv; defaults to ``1280 * max(1, width_mult)``.
        output_stride: 8, 16 or 32; strides past it become dilations.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        stages: Sequence[tuple[int, int, int, int]] = STAGES,
        last_channels: int | None = None,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        stem_channels = _round_channels(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn_relu(3, stem_channels, 3, stride=2)]
        in_channels, current_stride, dilation = stem_channels, 2, 1
        for expansion, channels, repeats, stage_stride in stages:
            out_channels = _round_channels(channels * width_mult)
            stride = stage_stride
            if current_stride * stage_stride > output_stride:
                dilation, stride = dilation * stage_stride, 1
            else:
                current_stride *= stage_stride
            for i in range(max(1, round(repeats * depth_mult))):
                layers.append(InvertedResidual(in_channels, out_channels, stride if i == 0 else 1, expansion, dilation))
                in_channels = out_channels
        self.out_channels = last_channels or _round_channels(1280 * max(1.0, width_mult))
        layers.append(_conv_bn_relu(in_channels, self.out_channels, 1))
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.features(x)
        return out


class MobileNetV2MTL(nn.Module):
    """MobileNetV2 shared by every task, then one ASPP-lite head per task (``self.heads[task]``).

    Args:
        tasks: task name -> output channels; defaults to segmentation (13), depth (1) and normal (3).
        width_mult: channel multiplier of the backbone.
        depth_mult: repeat multiplier of the backbone's stages.
        stages: the backbone's ``(t, c, n, s)`` table.
        last_channels: channels of the shared feature map.
        output_stride: 8, 16 or 32.
        head_width: hidden channels of each head branch.
        head_dilations: dilation of each parallel head branch (small: the map is coarse at stride 32).
        head_dropout: dropout inside the heads.

    Raises:
        ConfigError: a knob is out of range.
    """

    def __init__(
        self,
        tasks: Mapping[str, int] | None = None,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        stages: Sequence[tuple[int, int, int, int]] = STAGES,
        last_channels: int | None = None,
        output_stride: int = 32,
        head_width: int = 256,
        head_dilations: Sequence[int] = (1, 2, 3, 4),
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        problems = []
        if width_mult <= 0 or depth_mult <= 0:
            problems.append(f"width_mult {width_mult!r} and depth_mult {depth_mult!r} must be positive")
        if not stages or any(len(s) != 4 or min(s) < 1 for s in stages):
            problems.append(f"stages {tuple(stages)!r} must be non-empty (t, c, n, s) rows of positive ints")
        if output_stride not in (8, 16, 32):
            problems.append(f"output_stride {output_stride!r} must be 8, 16 or 32")
        if problems:
            raise ConfigError("; ".join(problems))
        self.tasks = resolve_tasks(tasks)
        self.backbone = MobileNetV2Backbone(width_mult, depth_mult, stages, last_channels, output_stride)
        self.heads = build_heads(self.tasks, self.backbone.out_channels, head_width, head_dilations, head_dropout)
        init_weights_(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return run_heads(self.heads, self.backbone(x))


def mobilenet_v2(**overrides: Any) -> MobileNetV2MTL:
    """Standard MobileNetV2 (width 1.0, 1280 output channels, output stride 32) with 256-wide heads."""
    return MobileNetV2MTL(**overrides)


def mobilenet_v2_tiny(**overrides: Any) -> MobileNetV2MTL:
    """A ~0.1 M-parameter MobileNetV2 for demos and tests: quarter width, one block per stage, stride 8."""
    defaults: dict[str, Any] = {
        "width_mult": 0.25,
        "depth_mult": 0.01,
        "last_channels": 64,
        "output_stride": 8,
        "head_width": 16,
    }
    return MobileNetV2MTL(**{**defaults, **overrides})


__all__ = [
    "STAGES",
    "InvertedResidual",
    "MobileNetV2Backbone",
    "MobileNetV2MTL",
    "mobilenet_v2",
    "mobilenet_v2_tiny",
]

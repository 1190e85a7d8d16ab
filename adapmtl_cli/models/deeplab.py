"""DeepLab-ResNet multitask reference model: a dilated ResNet backbone with one ASPP-lite head per task.

The backbone follows AdapMTL's Deeplab-ResNet (method.md §4): BasicBlocks, a stride-2 stem and max-pool,
then four stages with strides ``(1, 2, 1, 1)`` and dilations ``(1, 1, 2, 4)``, so the shared map has output
stride 8 and ``8 * width`` channels. Every head reads that map (hard sharing) and predicts at its resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.models.heads import (
    DEFAULT_HEAD_DILATIONS,
    build_heads,
    init_weights_,
    resolve_tasks,
    run_heads,
)

_STAGE_STRIDES = (1, 2, 1, 1)
_STAGE_DILATIONS = (1, 1, 2, 4)
_STAGE_WIDTHS = (1, 2, 4, 8)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut; dilation keeps the map size."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + self.downsample(x))
        return out


class DilatedResNet(nn.Module):
    """ResNet trunk without pooling or classifier, dilated so that its output stride is 8.

    Args:
        width: channels of the stem and first stage; stage ``i`` has ``width * (1, 2, 4, 8)[i]``.
        blocks: BasicBlocks per stage, e.g. ``(2, 2, 2, 2)`` (ResNet-18) or ``(3, 4, 6, 3)`` (ResNet-34).
        stem_kernel: size of the stride-2 stem convolution (7 as in ResNet, 3 for tiny inputs).
    """

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), stem_kernel: int = 7) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, stem_kernel, stride=2, padding=stem_kernel // 2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        in_channels = width
        for n, stride, dilation, mult in zip(blocks, _STAGE_STRIDES, _STAGE_DILATIONS, _STAGE_WIDTHS, strict=True):
            out_channels = width * mult
            layers = [BasicBlock(in_channels, out_channels, stride, dilation)]
            layers += [BasicBlock(out_channels, out_channels, 1, dilation) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class DeepLabResNetMTL(nn.Module):
    """Dilated ResNet shared by every task, then one ASPP-lite head per task (``self.heads[task]``).

    Args:
        tasks: task name -> output channels; defaults to segmentation (13), depth (1) and normal (3).
        width: base channel count of the backbone; the shared map has ``8 * width`` channels.
        blocks: four BasicBlock counts, one per stage.
        head_width: hidden channels of each head branch; defaults to ``4 * width``.
        head_dilations: dilation of each parallel head branch.
        head_dropout: dropout inside the heads (0 keeps training deterministic).
        stem_kernel: 7 or 3; the size of the stride-2 stem convolution.

    Raises:
        ConfigError: a knob is out of range.
    """

    def __init__(
        self,
        tasks: Mapping[str, int] | None = None,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        head_width: int | None = None,
        head_dilations: Sequence[int] = DEFAULT_HEAD_DILATIONS,
        head_dropout: float = 0.0,
        stem_kernel: int = 7,
    ) -> None:
        super().__init__()
        problems = []
        if width < 1:
            problems.append(f"width {width!r} must be positive")
        if len(blocks) != 4 or any(n < 1 for n in blocks):
            problems.append(f"blocks {tuple(blocks)!r} must be four positive counts")
        if stem_kernel not in (3, 7):
            problems.append(f"stem_kernel {stem_kernel!r} must be 3 or 7")
        if problems:
            raise ConfigError("; ".join(problems))
        self.tasks = resolve_tasks(tasks)
        self.backbone = DilatedResNet(width, blocks, stem_kernel)
        self.heads = build_heads(
            self.tasks, self.backbone.out_channels, head_width or 4 * width, head_dilations, head_dropout
        )
        init_weights_(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return run_heads(self.heads, self.backbone(x))


def deeplab_resnet(**overrides: Any) -> DeepLabResNetMTL:
    """ResNet-18-like DeepLab: width 64, blocks ``(2, 2, 2, 2)``, 256-wide heads."""
    return DeepLabResNetMTL(**{"width": 64, "blocks": (2, 2, 2, 2), **overrides})


def deeplab_resnet34(**overrides: Any) -> DeepLabResNetMTL:
    """ResNet-34 DeepLab as in AdapMTL's backbone: width 64, blocks ``(3, 4, 6, 3)``."""
    return DeepLabResNetMTL(**{"width": 64, "blocks": (3, 4, 6, 3), **overrides})


def deeplab_resnet_tiny(**overrides: Any) -> DeepLabResNetMTL:
    """A ~0.2 M-parameter DeepLab for demos and tests: width 8, one block per stage, 16-wide heads."""
    defaults: dict[str, Any] = {
        "width": 8,
        "blocks": (1, 1, 1, 1),
        "head_width": 16,
        "head_dilations": (1, 2, 3, 4),
        "stem_kernel": 3,
    }
    return DeepLabResNetMTL(**{**defaults, **overrides})


__all__ = [
    "BasicBlock",
    "DeepLabResNetMTL",
    "DilatedResNet",
    "deeplab_resnet",
    "deeplab_resnet34",
    "deeplab_resnet_tiny",
]

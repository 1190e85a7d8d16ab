"""The ASPP-lite task head shared by the reference models.

Each head runs parallel 3x3 dilated convolutions over the backbone's feature map, each followed by two 1x1
convolutions, and sums the branch outputs. This follows AdapMTL's ``ASPPHeadNode`` (method.md §4) with the
width and dilations as knobs, so the same block serves full-size models and millisecond-scale test models.
Heads never resize: their output keeps the backbone's resolution, and each task upsamples for itself.
The module also holds what both reference models build around their heads: the default task layout and the
Kaiming initialisation. ReLUs are not in-place so forward hooks always see the pre-activation tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from adapmtl_cli.errors import ConfigError

DEFAULT_TASKS: dict[str, int] = {"segmentation": 13, "depth": 1, "normal": 3}
"""Task name -> output channels used when a model is built without ``tasks`` (NYU-v2 13-class layout)."""

DEFAULT_HEAD_DILATIONS: tuple[int, ...] = (1, 6, 12, 18)
"""Dilations of the four parallel branches for feature maps at output stride 8."""


def resolve_tasks(tasks: Mapping[str, int] | None) -> dict[str, int]:
    """Return a copy of ``tasks``, or of :data:`DEFAULT_TASKS` when it is ``None``.

    Raises:
        ConfigError: no task is given, or a channel count is not a positive integer.
    """
    resolved = dict(DEFAULT_TASKS if tasks is None else tasks)
    problems = [
        f"task {name!r} has {ch!r} channels"
        for name, ch in resolved.items()
        if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1
    ]
    if not resolved:
        problems.insert(0, "tasks is empty")
    if problems:
        raise ConfigError("; ".join(problems) + "; give each task a positive channel count")
    return resolved


def init_weights_(module: nn.Module) -> None:
    """Kaiming-initialise every conv and linear layer under ``module``; reset BatchNorm to identity.

    Deterministic under ``torch.manual_seed``: layers are visited in registration order.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ASPPLiteHead(nn.Module):
    """Parallel dilated 3x3 branches, each ``conv3x3 -> ReLU -> 1x1 -> ReLU -> 1x1``, summed.

    Args:
        in_channels: channels of the backbone feature map.
        out_channels: channels of the task output.
        width: hidden channels inside each branch.
        dilations: one branch per dilation; padding equals dilation so the spatial size is kept.
        dropout: dropout after each hidden ReLU (AdapMTL uses 0.5; 0 keeps training deterministic).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int,
        dilations: Sequence[int] = DEFAULT_HEAD_DILATIONS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not dilations or any(d < 1 for d in dilations):
            raise ConfigError(f"head dilations {tuple(dilations)!r} are invalid; give one or more positive ints")
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=d, dilation=d, bias=True),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Conv2d(width, width, 1, bias=True),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Conv2d(width, out_channels, 1, bias=True),
            )
            for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def build_heads(
    tasks: Mapping[str, int],
    in_channels: int,
    width: int,
    dilations: Sequence[int] = DEFAULT_HEAD_DILATIONS,
    dropout: float = 0.0,
) -> nn.ModuleDict:
    """Build one :class:`ASPPLiteHead` per task, keyed by task name in ``tasks`` order."""
    return nn.ModuleDict({name: ASPPLiteHead(in_channels, ch, width, dilations, dropout) for name, ch in tasks.items()})


def run_heads(heads: nn.ModuleDict, features: Tensor) -> dict[str, Tensor]:
    """Apply every head to the same shared feature map; the loop is over modules, so it exports statically."""
    return {name: head(features) for name, head in heads.items()}


__all__ = [
    "DEFAULT_HEAD_DILATIONS",
    "DEFAULT_TASKS",
    "ASPPLiteHead",
    "build_heads",
    "init_weights_",
    "resolve_tasks",
    "run_heads",
]

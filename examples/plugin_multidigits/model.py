"""The MultiDigits model: a small shared CNN trunk and one head per task (``--factory .../model.py:build``)."""

from __future__ import annotations

import torch
from torch import nn

OUTPUTS = {"left": 10, "right": 10, "sum": 1}


class MultiDigitsNet(nn.Module):
    """Trunk: three 3x3 convolutions, 24x24 -> 32 channels of 6x6. Heads: flatten -> 32 -> task outputs.

    The heads see the whole flattened feature map, not a global average, so they know which half a digit is in.
    ``forward`` returns ``{"left": (B, 10) logits, "right": (B, 10) logits, "sum": (B, 1)}``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Flatten(), nn.Linear(32 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, size))
                for name, size in OUTPUTS.items()
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}


def build() -> MultiDigitsNet:
    """The untrained architecture; ``adapmtl`` loads the dense state_dict into it."""
    return MultiDigitsNet()

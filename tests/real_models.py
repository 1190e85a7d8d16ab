"""Models in the shapes of real multitask code the tool met, for the tests of the faults they exposed.

- :class:`TiedHeads`: weight tying. :class:`tiny_models.HardShared`-like, but the depth and normal heads share
  their first conv's weight (their biases stay apart). Factory: :func:`tied_heads`.
- :class:`DeepSupervision`: MTI-Net's output structure, the final predictions beside auxiliary ones per scale:
  ``{"deep_supervision": {"scale_i": {"semseg", "depth", "normals", "features_i"}}, "semseg", "depth",
  "normals"}``. Factory: :func:`deep_supervision`; :func:`deep_supervision_only` drops the final ``semseg``, so
  only same-depth auxiliary ones are left for segmentation.

Each takes ``(B, 3, H, W)`` images and returns segmentation (13 classes), depth and normal maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = {"segmentation": 13, "depth": 1, "normal": 3}


class TiedHeads(nn.Module):
    """A shared encoder and one conv head per task; ``heads.normal.0.weight`` *is* ``heads.depth.0.weight``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict(
            {t: nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, c, 1))
             for t, c in CHANNELS.items()}
        )  # fmt: skip
        self.heads["normal"][0].weight = self.heads["depth"][0].weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder(x)
        return {t: head(feat) for t, head in self.heads.items()}


class DeepSupervision(nn.Module):
    """A two-scale encoder; final heads at 1/2 resolution and auxiliary heads at every scale (MTI-Net style)."""

    def __init__(self, width: int = 8, scales: int = 2, final_semseg: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU())
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU()) for _ in range(scales))
        names = {"semseg": 13, "depth": 1, "normals": 3}
        self.aux = nn.ModuleList(
            nn.ModuleDict({k: nn.Conv2d(width, c, 1) for k, c in names.items()}) for _ in self.down
        )
        self.final = nn.ModuleDict({k: nn.Conv2d(width, c, 3, padding=1) for k, c in names.items()})
        self.final_semseg = final_semseg

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        feat = self.stem(x)
        aux, scales = {}, []
        for i, (down, heads) in enumerate(zip(self.down, self.aux, strict=True)):
            scale = down(feat if i == 0 else scales[-1])
            scales.append(scale)
            aux[f"scale_{i}"] = {**{k: head(scale) for k, head in heads.items()}, f"features_{i}": scale}
        fused = feat + sum(F.interpolate(s, size=feat.shape[-2:]) for s in scales)
        out: dict[str, object] = {"deep_supervision": aux}
        out.update({k: head(fused) for k, head in self.final.items() if k != "semseg" or self.final_semseg})
        return out


def tied_heads() -> nn.Module:
    torch.manual_seed(0)
    return TiedHeads()


def deep_supervision() -> nn.Module:
    torch.manual_seed(0)
    return DeepSupervision()


def deep_supervision_only() -> nn.Module:
    torch.manual_seed(0)
    return DeepSupervision(final_semseg=False)

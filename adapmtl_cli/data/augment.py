"""Training-time augmentation of canonical dense samples: random scale (crop, resize back) and horizontal flip.

The LibMTL NYU-v2 recipe (datasets.md §1a), applied to samples already in the canonical formats of
``data/base.py``. Per sample, with ``s`` drawn from ``{1.0, 1.2, 1.5}``:

- crop a ``(round(H / s), round(W / s))`` window at a uniformly random position and resize it back to ``(H, W)``:
  the image bilinearly; segmentation and depth with nearest neighbour (pixel centres, ``nearest-exact``), and
  **depth divided by s** (the scene seen s times closer; invalid 0 stays 0); normals bilinearly, renormalised
  to unit length, with validity taken by nearest neighbour from the source so an invalid pixel stays exactly
  zero and no vector is made up from invalid neighbours. ``s = 1`` leaves the sample untouched.
- flip horizontally with probability 0.5, negating the normal's x component (camera x points right).
  ``flip_normal_x=False`` keeps x, as AdaShare, DiSparse and AdapMTL do for NYU (they store normals as colour
  triples, where negating makes no sense); the AdaShare-normals mode of ``nyuv2`` uses it.

Deterministic and resumable: item ``index`` of epoch ``epoch`` draws from
``numpy.random.default_rng([seed, epoch, index])`` and nothing else, so a resumed run, and every DataLoader
worker, sees exactly the same samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adapmtl_cli.data.base import Sample
from adapmtl_cli.errors import ConfigError

SCALES = (1.0, 1.2, 1.5)
KINDS = ("segmentation", "depth", "normal")
"""The task kinds augmentation knows how to transform."""


@dataclass(frozen=True)
class AugmentDraw:
    """One sample's random choices: the scale, the crop window (top, left, height, width) and the flip."""

    scale: float
    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_augment(rng: np.random.Generator, size: tuple[int, int], scales: tuple[float, ...] = SCALES) -> AugmentDraw:
    """Draw the scale, then the crop's top and left, then the flip (p = 0.5) for an image of ``size = (H, W)``."""
    h, w = size
    scale = float(scales[int(rng.integers(len(scales)))])
    ch, cw = max(1, min(h, round(h / scale))), max(1, min(w, round(w / scale)))
    top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return AugmentDraw(scale, top, left, ch, cw, bool(rng.random() < 0.5))


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a ``(C, h, w)`` float tensor to ``size``; bilinear uses pixel centres (``align_corners=False``)."""
    if mode == "bilinear":
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    return F.interpolate(x[None], size=size, mode="nearest-exact")[0]


def _scale_target(kind: str, target: torch.Tensor, d: AugmentDraw, size: tuple[int, int]) -> torch.Tensor:
    window = target[..., d.top : d.top + d.height, d.left : d.left + d.width]
    if kind == "segmentation":
        return _resize(window[None].float(), size, "nearest")[0].round().to(target.dtype)
    if kind == "depth":
        return _resize(window.float(), size, "nearest") / d.scale
    valid = _resize(window.ne(0).any(dim=0, keepdim=True).float(), size, "nearest")[0] > 0.5
    smooth = _resize(window.float(), size, "bilinear")
    length = smooth.square().sum(dim=0).sqrt()  # much faster than norm(dim=0) over the channel axis on CPU
    valid &= length > 1e-6
    return torch.where(valid, smooth / length.clamp_min(1e-6), torch.zeros_like(smooth))


def augment_sample(sample: Sample, kinds: Mapping[str, str], d: AugmentDraw, *, flip_normal_x: bool = True) -> Sample:
    """Apply the draw ``d`` to ``sample``; ``kinds`` maps each target's name to its kind (one of :data:`KINDS`).

    Targets without an entry in ``kinds`` are an error (they would come out misaligned with the image).
    """
    image, targets = sample
    size = (int(image.shape[-2]), int(image.shape[-1]))
    out = dict(targets)
    if (d.height, d.width) != size:
        window = image[..., d.top : d.top + d.height, d.left : d.left + d.width]
        image = _resize(window.float(), size, "bilinear").to(image.dtype)
        out = {name: _scale_target(kinds[name], t, d, size) for name, t in out.items()}
    if d.flip:
        image = image.flip(-1)
        out = {name: t.flip(-1) for name, t in out.items()}
        if flip_normal_x:
            sign = torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
            out = {name: t * sign.to(t.dtype) if kinds[name] == "normal" else t for name, t in out.items()}
    return image, out


class AugmentedSplit(Dataset[Sample]):
    """A split whose items are augmented with draws from ``(seed, epoch, index)``; see the module docstring.

    Args:
        dataset: the split to augment (canonical samples).
        kinds: target name -> task kind, for every target the samples carry.
        flip_normal_x: negate the normal's x on a flip (False only for AdaShare-convention normals).
        scales: the scales to draw from, uniformly.

    Raises:
        ConfigError: a kind is not one augmentation can transform.
    """

    def __init__(
        self,
        dataset: Dataset[Sample],
        kinds: Mapping[str, str],
        *,
        flip_normal_x: bool = True,
        scales: tuple[float, ...] = SCALES,
    ) -> None:
        unknown = sorted({k for k in kinds.values() if k not in KINDS})
        if unknown:
            raise ConfigError(
                f"augment=true cannot transform task kind(s) {', '.join(map(repr, unknown))}; it knows "
                f"{', '.join(KINDS)}; drop augment=true"
            )
        self.dataset = dataset
        self.kinds = dict(kinds)
        self.flip_normal_x = flip_normal_x
        self.scales = tuple(scales)
        self.epoch, self.seed = 0, 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Draw the next items for ``epoch`` of a run seeded with ``seed`` (negative seeds wrap modulo 2**64)."""
        self.epoch, self.seed = int(epoch), int(seed) % 2**64

    def draw(self, index: int, size: tuple[int, int]) -> AugmentDraw:
        """The draw of item ``index`` in the current epoch."""
        return draw_augment(np.random.default_rng([self.seed, self.epoch, index]), size, self.scales)

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # every split the adapters open has a length

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample {index} is out of range for {n} samples")
        index %= n
        image, targets = self.dataset[index]
        d = self.draw(index, (int(image.shape[-2]), int(image.shape[-1])))
        return augment_sample((image, targets), self.kinds, d, flip_normal_x=self.flip_normal_x)

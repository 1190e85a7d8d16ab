"""MultiDigits, a dataset plug-in for ``adapmtl --data examples/plugin_multidigits/plugin.py``.

Each sample is a 24x24 grey image holding two digits drawn from a 5x7 bitmap font, one in each half, with a
random offset, stroke thickness, brightness and noise. Three tasks: ``left`` and ``right`` (the digits,
10-class classification) and ``sum`` (their sum, regression with one output).

On disk (written by :func:`make_data`, nothing to download): ``root/{train,val}/images.npy`` float32
``(N, 1, 24, 24)`` in about [0, 1], and ``root/{train,val}/digits.npy`` int64 ``(N, 2)`` (left, right).

The plug-in interface is three module-level names: ``TASKS``, ``dataset(root, split, **options)`` and the
optional ``describe(root)``; see ``adapmtl_cli/data/plugin.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

SIZE = 24
SCALE = 2  # font pixels -> image pixels: glyphs are 10x14
FONT = {
    0: (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}

TASKS = [
    {"kind": "classification", "name": "left", "num_classes": 10},
    {"kind": "classification", "name": "right", "num_classes": 10},
    {"kind": "regression", "name": "sum", "num_outputs": 1},
]


def _glyph(digit: int, bold: bool) -> np.ndarray:
    """The digit as a float mask of 14x10 pixels; ``bold`` thickens strokes by one pixel right and down."""
    bitmap = np.array([[c == "#" for c in row] for row in FONT[digit]], dtype=np.float32)
    mask = np.kron(bitmap, np.ones((SCALE, SCALE), dtype=np.float32))
    if bold:
        grown = mask.copy()
        grown[:, 1:] = np.maximum(grown[:, 1:], mask[:, :-1])
        grown[1:, :] = np.maximum(grown[1:, :], mask[:-1, :])
        mask = grown
    return mask


def draw(left: int, right: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(1, 24, 24)`` float32 image of the two digits, with random placement, thickness and noise."""
    image = np.zeros((SIZE, SIZE), dtype=np.float32)
    half = SIZE // 2
    for slot, digit in enumerate((left, right)):
        glyph = _glyph(digit, bold=bool(rng.random() < 0.5)) * rng.uniform(0.6, 1.0)
        h, w = glyph.shape
        y = int(rng.integers(3, SIZE - h - 2))  # a jitter of +-2 around the middle
        x = slot * half + int(rng.integers(0, half - w + 1))
        image[y : y + h, x : x + w] = np.maximum(image[y : y + h, x : x + w], glyph)
    image += rng.normal(0.0, 0.15, image.shape).astype(np.float32)
    return image[None]


def make_data(root: Path, train: int = 2000, val: int = 500, seed: int = 0) -> None:
    """Write ``train`` and ``val`` samples under ``root``; the same ``seed`` always gives the same files."""
    for index, (split, count) in enumerate((("train", train), ("val", val))):
        rng = np.random.default_rng([seed, index])
        digits = rng.integers(0, 10, size=(count, 2))
        images = np.stack([draw(int(a), int(b), rng) for a, b in digits])
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", images)
        np.save(folder / "digits.npy", digits.astype(np.int64))


class MultiDigits(Dataset):
    """One split held in memory; item ``i`` is ``(image, {"left": id, "right": id, "sum": (1,) float})``."""

    def __init__(self, images: np.ndarray, digits: np.ndarray) -> None:
        self.images = torch.from_numpy(images)
        self.digits = torch.from_numpy(digits)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        left, right = self.digits[index]
        return self.images[index], {"left": left, "right": right, "sum": (left + right).float().reshape(1)}


def dataset(root: Path, split: str, limit: str | None = None) -> MultiDigits:
    """The ``split`` under ``root``; ``--data-opt limit=N`` keeps its first N samples (a quick try-out)."""
    folder = Path(root) / split
    if not (folder / "images.npy").is_file() or not (folder / "digits.npy").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} lacks images.npy or digits.npy; write the data first with "
            "python examples/plugin_multidigits/train_dense.py DIR (then --data-dir DIR/data)"
        )
    images = np.load(folder / "images.npy", allow_pickle=False)
    digits = np.load(folder / "digits.npy", allow_pickle=False)
    if limit is not None:
        images, digits = images[: int(limit)], digits[: int(limit)]
    return MultiDigits(images, digits)


def describe(root: Path) -> dict[str, object]:
    """What ``adapmtl data check`` adds to its generic summary: the layout and how often each digit occurs."""
    digits = np.load(Path(root) / "train" / "digits.npy", allow_pickle=False)
    return {"layout": "multidigits", "train_digit_counts": np.bincount(digits.ravel(), minlength=10).tolist()}

"""NYU-v2 in the AdaShare / DiSparse / AdapMTL layout: ``nyu_v2_3task.json`` plus PNG and ``.npy`` files.

``root/nyu_v2_3task.json`` maps split keys (``train``, ``test``, optional ``train1``/``train2`` and
``heldout``) to lists of 4-tuples of root-relative paths ``[img/XXXX.png, seg/XXXX.png, normal_mask/XXXX.png,
depth/XXXX.npy]``. Our ``val`` split is the JSON's ``test`` (the layout has no separate validation set), and
our held-out ``test`` split is the optional ``heldout`` list (:data:`~adapmtl_cli.data.layouts.HELDOUT_KEY`,
written by ``adapmtl data synth --layout nyuv2-adashare --test N``; real packs have none, and opening ``test``
on them is a ``DataError``). Files (datasets.md §1b):

- ``img``: RGB PNG, uint8. Decoded per the ``input`` option: ``caffe-bgr`` (default, what checkpoints trained by
  AdaShare, DiSparse and AdapMTL expect: channels in BGR order, 0..255 minus the Caffe mean
  (104.01, 116.67, 122.68), no /255) or ``rgb01`` (RGB / 255 in [0, 1], like the MTAN layout).
- ``seg``: 8-bit gray PNG, NYU-40 class ids 0..39, 255 = unlabelled (-> -1, the canonical ignore).
- ``normal_mask``: RGB PNG storing ``(n + 1) / 2 * 255``; (255, 255, 255) = invalid. Decoded per ``normals``:
  ``unit`` (default, the correct decoding) gives ``n = rgb / 255 * 2 - 1``, renormalised, with invalid and
  near-zero (length < 0.5, e.g. the stray (127, 127, 127) pixels) vectors set to zero; ``adashare`` reproduces
  the original repos' target for comparison: the raw colour triple in BGR order (they read with cv2),
  normalised to unit length, invalid where any channel is 255. Angles between such vectors are compressed
  (two true normals 90° apart come out about 33° apart), so metrics in that mode are comparable with the
  AdaShare-family papers only, not with MTAN/LibMTL numbers.
- ``depth``: float ``.npy`` (H, W) metres, filled; values <= 0 become 0 (invalid); NaN or inf is an error.

``open`` validates the JSON and every file's header (PNG size and mode without decoding, ``.npy`` header) so
a bad folder fails before training, with the file named.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adapmtl_cli.data.augment import AugmentedSplit
from adapmtl_cli.data.base import SPLITS, Sample, choice_option, unknown_split
from adapmtl_cli.data.layouts import (
    ADASHARE_FOLDERS,
    ADASHARE_JSON,
    CAFFE_MEAN_BGR,
    HELDOUT_KEY,
    INPUT_ENCODINGS,
    NYU40_CLASSES,
)
from adapmtl_cli.data.npy import load_npy, read_npy_header
from adapmtl_cli.data.problems import MAX_PROBLEMS, quoted, raise_problems
from adapmtl_cli.errors import DataError
from adapmtl_cli.files.reading import read_json
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.tasks.registry import get_task

NORMALS = ("unit", "adashare")
TASK_NAMES = ("segmentation", "depth", "normal")
SPLIT_KEYS = {"train": "train", "val": "test", "test": HELDOUT_KEY, "train1": "train1", "train2": "train2"}
"""Our split name -> the JSON key it reads (``val`` is AdaShare's ``test`` list, ``test`` the ``heldout`` one)."""

_MODES = {"img": ("RGB",), "seg": ("L",), "normal_mask": ("RGB",)}
_DESCRIBE_SAMPLES = 64
_ImagePaths = tuple[Path, Path, Path, Path]


def read_index(root: Path) -> dict[str, Any]:
    """The parsed ``nyu_v2_3task.json`` of ``root``; a ``DataError`` when missing, unreadable or not an object."""
    path = Path(root) / ADASHARE_JSON
    if not Path(root).is_dir():
        raise DataError(f"dataset root {quoted(Path(root))} does not exist; pass the folder that holds {ADASHARE_JSON}")
    if not path.is_file():
        mtan = (Path(root) / "train").is_dir() or (Path(root) / "val").is_dir()
        hint = " (the root holds train/ or val/: is it the MTAN layout? use layout=auto or mtan)" if mtan else ""
        raise DataError(f"{quoted(path)} does not exist; the AdaShare layout lists its samples in it{hint}")
    # Not UTF-8, not JSON, nested too deep, unreadable: one DataError naming the file (files/reading.py).
    index = read_json(path, DataError, "", "fix, re-copy or regenerate it")
    if not isinstance(index, dict):
        raise DataError(f"{quoted(path)} holds a JSON {type(index).__name__}; expected an object of split lists")
    return index


def _entry_paths(root: Path, real_root: Path, where: str, entry: Any) -> tuple[_ImagePaths | None, list[str]]:
    """The four checked paths of one JSON entry, or the problems with it."""
    if not isinstance(entry, list | tuple) or len(entry) != 4 or not all(isinstance(p, str) for p in entry):
        return None, [f"{where} is {json.dumps(entry)[:80]}; expected 4 paths [img, seg, normal_mask, depth]"]
    paths, problems = [], []
    for rel in entry:
        posix = PurePosixPath(rel.replace("\\", "/"))
        path = root / posix
        if not rel or posix.is_absolute() or PureWindowsPath(rel).drive:
            problems.append(f"{where} path {rel!r} is absolute or empty; paths must be relative to the dataset root")
        elif ".." in posix.parts:
            problems.append(f"{where} path {rel!r} contains '..'; paths must stay inside the dataset root")
        elif not path.resolve().is_relative_to(real_root):
            problems.append(f"{where} path {rel!r} resolves outside the dataset root (a symlink?); refused")
        elif not path.is_file():
            problems.append(f"{quoted(path)} listed in {where} does not exist")
        paths.append(path)
    if problems:
        return None, problems
    img, seg, normal_mask, depth = paths  # one path per entry item, and the entry has 4
    return (img, seg, normal_mask, depth), problems


def _png_header(path: Path) -> tuple[tuple[int, int], str]:
    """``((H, W), mode)`` of an image file, read from its header without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return (im.size[1], im.size[0]), im.mode
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{quoted(path)} is not a readable image ({exc}); re-copy or re-save it as PNG") from None


def _sample_problems(paths: _ImagePaths, size: tuple[int, int] | None) -> tuple[tuple[int, int], list[str]]:
    """The (H, W) of one sample's image, and what is wrong with its files' headers (sizes must match ``size``)."""
    problems = []
    sizes = {}
    for folder, path in zip(ADASHARE_FOLDERS[:3], paths[:3], strict=True):
        hw, mode = _png_header(path)
        sizes[path] = hw
        if mode not in _MODES[folder]:
            kind = "8-bit gray ('L')" if folder == "seg" else "RGB"
            problems.append(f"{quoted(path)} has image mode {mode!r}; expected {kind} for {folder}")
    shape, dtype = read_npy_header(paths[3])
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 1):
        problems.append(f"{quoted(paths[3])} has shape {shape!r}; expected (H, W) depth in metres")
    else:
        sizes[paths[3]] = (shape[0], shape[1])
    if dtype.kind != "f":
        problems.append(f"{quoted(paths[3])} has dtype {str(dtype)!r}; expected float32 depth in metres")
    own = sizes[paths[0]]
    for path, hw in list(sizes.items())[1:]:
        if hw != own:
            problems.append(f"{quoted(path)} is {hw[0]}x{hw[1]} but {quoted(paths[0])} is {own[0]}x{own[1]}")
    if size is not None and own != size:
        problems.append(f"{quoted(paths[0])} is {own[0]}x{own[1]}, unlike the {size[0]}x{size[1]} of the first sample")
    return own, problems


def decode_image(rgb: np.ndarray, input_format: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32: BGR minus the Caffe mean, or RGB / 255 (see module docstring)."""
    if input_format == "rgb01":
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def decode_labels(gray: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) uint8 NYU-40 ids -> int64 with 255 -> -1; any other id >= 40 is a ``DataError`` naming ``path``."""
    bad = (gray >= len(NYU40_CLASSES)) & (gray != 255)
    if bad.any():
        raise DataError(
            f"{quoted(path)} holds class id {int(gray[bad].flat[0])}; NYU-40 labels are 0..39 with 255 = ignore"
        )
    labels = gray.astype(np.int64)
    labels[gray == 255] = -1
    return labels


def decode_normals(rgb: np.ndarray, normals: str) -> np.ndarray:
    """(H, W, 3) uint8 encoded normals -> (3, H, W) float32 unit vectors, zero = invalid (see module docstring)."""
    if normals == "adashare":
        vec = rgb[..., ::-1].astype(np.float64)
        valid = (rgb != 255).all(axis=-1) & rgb.any(axis=-1)
    else:
        vec = rgb.astype(np.float64) / 255.0 * 2.0 - 1.0
        valid = ~(rgb == 255).all(axis=-1)
    length = np.linalg.norm(vec, axis=-1)
    if normals == "unit":
        valid &= length >= 0.5
    unit = np.where(valid[..., None], vec / np.maximum(length, 1e-12)[..., None], 0.0)
    return np.ascontiguousarray(unit.transpose(2, 0, 1), dtype=np.float32)


def decode_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) metres -> (1, H, W) float32 with values <= 0 set to 0 (invalid)."""
    depth = depth.reshape(depth.shape[:2]).astype(np.float32)
    return np.where(depth > 0, depth, np.float32(0))[None]


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{quoted(path)} cannot be decoded ({exc}); re-copy or re-save it as PNG") from None


class AdaShareSplit(Dataset[Sample]):
    """One validated split; item ``i`` decodes the four files of the JSON's ``i``-th entry."""

    def __init__(self, key: str, samples: list[_ImagePaths], size: tuple[int, int], input_format: str, normals: str):
        self.key = key
        self.samples = samples
        self.size = size
        self.input_format = input_format
        self.normals = normals

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self, index: int) -> np.ndarray:
        """The int64 class ids of sample ``index``, -1 = ignore."""
        path = self.samples[index][1]
        return decode_labels(_read_png(path), path)

    def depth(self, index: int) -> np.ndarray:
        """The (1, H, W) float32 depth of sample ``index``, 0 = invalid."""
        return decode_depth(load_npy(self.samples[index][3]))

    def __getitem__(self, index: int) -> Sample:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"sample {index} is out of range for {n} samples")
        index %= n
        img, _, normal, _ = self.samples[index]
        image = torch.from_numpy(decode_image(_read_png(img), self.input_format))
        return image, {
            "segmentation": torch.from_numpy(self.labels(index)),
            "depth": torch.from_numpy(self.depth(index)),
            "normal": torch.from_numpy(decode_normals(_read_png(normal), self.normals)),
        }


class NyuV2AdaShare:
    """Adapter for the AdaShare-family NYU-v2 layout (see the module docstring).

    Args:
        name: the ``--data`` value it was built for.
        augment: wrap the train split in :class:`AugmentedSplit`; the normal's x is negated on a flip except
            with ``normals="adashare"``, where the original repos do not negate it either.
        normals: ``"unit"`` or ``"adashare"``.
        input_format: ``"caffe-bgr"`` or ``"rgb01"`` (the ``input`` option).

    Raises:
        ConfigError: ``normals`` or ``input_format`` is not a known value.
    """

    def __init__(
        self, name: str = "nyuv2", *, augment: bool = False, normals: str = "unit", input_format: str = "caffe-bgr"
    ) -> None:
        self.name = name
        self.augment = augment
        self.normals = choice_option(name, "normals", normals, NORMALS)
        self.input_format = choice_option(name, "input", input_format, INPUT_ENCODINGS)

    def tasks(self, root: Path) -> list[TaskSpec]:
        """Segmentation (40 classes), depth and normal; checks that ``root`` holds the JSON index."""
        read_index(root)
        return [get_task("segmentation", num_classes=len(NYU40_CLASSES)), get_task("depth"), get_task("normal")]

    def open(self, root: Path, split: str) -> AdaShareSplit | AugmentedSplit:
        """Validate ``split`` from the JSON and headers: ``train``, ``val`` (JSON ``test``), ``test`` (JSON
        ``heldout``), ``train1``, ``train2``.

        Raises:
            DataError: the JSON is missing, invalid or lacks the split; an entry is not 4 relative paths inside
                the root; a file is missing or unreadable; a mode, shape, dtype or size is wrong.
        """
        root = Path(root)
        if split not in SPLIT_KEYS:
            raise unknown_split(split)
        index = read_index(root)
        key, json_path = SPLIT_KEYS[split], quoted(root / ADASHARE_JSON)
        if key == HELDOUT_KEY and key not in index:
            raise DataError(
                f"{json_path} has no {key!r} list, so there is no held-out test split (its 'test' list is our val); "
                "evaluate on val (--eval-split val) or generate one (adapmtl data synth ROOT --test N)"
            )
        if key not in index:
            keys = ", ".join(map(repr, index)) or "none"
            raise DataError(f"{json_path} has no {key!r} list (its keys: {keys}); the layout needs 'train' and 'test'")
        entries = index[key]
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{json_path} key {key!r} must be a non-empty list of [img, seg, normal_mask, depth]")
        real_root = root.resolve()
        samples, problems = [], []
        for i, entry in enumerate(entries):
            paths, found = _entry_paths(root, real_root, f"{ADASHARE_JSON}[{key!r}][{i}]", entry)
            problems += found
            if paths is not None:
                samples.append(paths)
            if len(problems) > MAX_PROBLEMS:
                break
        raise_problems(problems)
        size: tuple[int, int] | None = None
        for paths in samples:
            own, found = _sample_problems(paths, size)
            size = size or own
            problems += found
        raise_problems(problems)
        assert size is not None
        data = AdaShareSplit(key, samples, size, self.input_format, self.normals)
        if self.augment and split == "train":
            return AugmentedSplit(data, {t: t for t in TASK_NAMES}, flip_normal_x=self.normals == "unit")
        return data

    def describe(self, root: Path) -> dict[str, Any]:
        """See :meth:`DatasetAdapter.describe`; statistics come from the first 64 ``test`` samples.

        Splits whose JSON key is absent are left out (AdaShare can write a test-only JSON; ``test``, the
        ``heldout`` list, is listed only where there is one); ``normals`` and ``input`` report the decoding options.
        """
        root = Path(root)
        index = read_index(root)
        plain = NyuV2AdaShare(self.name, normals=self.normals, input_format=self.input_format)
        opened: dict[str, AdaShareSplit] = {}
        for split in SPLITS:
            if SPLIT_KEYS[split] in index:
                opened[split] = cast(AdaShareSplit, plain.open(root, split))  # never augmented: plain has no augment
        if not opened:
            raise DataError(f"{quoted(root / ADASHARE_JSON)} has neither a 'train' nor a 'test' list")
        sampled = opened.get("val") or opened["train"]
        count = min(len(sampled), _DESCRIBE_SAMPLES)
        pixels = np.zeros(len(NYU40_CLASSES) + 1, dtype=np.int64)
        invalid = total = 0
        for i in range(count):
            pixels += np.bincount(sampled.labels(i).ravel() + 1, minlength=len(pixels))
            depth = sampled.depth(i)
            invalid += int(np.count_nonzero(depth == 0))
            total += depth.size
        return {
            "root": str(root),
            "layout": "adashare",
            "splits": {
                split: {"folder": f"{ADASHARE_JSON}:{data.key}", "samples": len(data), "size": list(data.size)}
                for split, data in opened.items()
            },
            "tasks": list(TASK_NAMES),
            "sampled": {"split": sampled.key, "samples": count},
            "class_pixels": dict(zip(("ignore", *NYU40_CLASSES), pixels.tolist(), strict=True)),
            "depth_invalid_ratio": invalid / total if total else None,
            "normals": self.normals,
            "input": self.input_format,
        }

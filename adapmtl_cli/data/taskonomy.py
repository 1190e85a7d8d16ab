"""Tiny-Taskonomy in the AdaShare/DiSparse/AdapMTL layout (``taskonomy.json`` plus PNGs), registered as ``taskonomy``.

Layout. ``root/taskonomy.json`` maps split keys to lists of samples, each a list of 6 root-relative paths in the
order rgb, segment_semantic, normal, depth_zbuffer, keypoints2d, edge_texture. Keys: ``train`` and ``test`` (our
``val``), optionally ``train1``/``train2`` (the halves AdaShare alternates between) and ``test_small``; only
``train`` and ``test`` are read. Any folder structure works (the old ``<building>/<folder>/<file>``, Omnidata's
``<folder>/taskonomy/<building>/<file>``, AdapMTL's ``train/``-prefixed paths) as long as every path stays inside
the root. ``root/semseg_prior_factor.npy`` holds the 17 class weights of the segmentation loss.

Every image of a split must have one size: the loader never resizes. Our generator writes 256x256; resize real
Taskonomy (512x512) beforehand with nearest neighbour for every modality, RGB included, as AdaShare does.

Decoding, raw file -> target (the AdaShare-family transform, without its random scale and crop):

- rgb (8-bit RGB) -> ``(3, H, W)`` float32: ``input=caffe-bgr`` (default, what AdaShare-family checkpoints expect)
  gives BGR 0..255 minus the Caffe mean (104.01, 116.67, 122.68); ``input=rgb01`` gives RGB / 255.
- segment_semantic (8-bit grey: 0 = uncertain, 1 = background, 2..17 = 16 objects) -> ``(H, W)`` int64
  ``raw - 1``, 17 classes 0..16. Uncertain pixels become background (0) as in the original code
  (``uncertain=background``, default) or -1 = ignore (``uncertain=ignore``).
- depth_zbuffer (16-bit, 1/512 m) -> ``(1, H, W)`` float32 ``log(1 + raw) / log(65536)`` in [0, 1); raw >= 64500
  is invalid and becomes 0. The depth kind's "0 = invalid" rule stays exact, as ``log(1 + 0) = 0`` too.
- normal (8-bit RGB centred on 127.5) -> ``(3, H, W)`` float32 ``rgb / 255 * 2 - 1``. A pixel is invalid (zero
  vector) where its depth_zbuffer is invalid (so reading normals also reads depth_zbuffer) or where the decoded
  vector is shorter than 0.5 (the grey "no normal" pixels).
- keypoints2d, edge_texture (16-bit) -> ``(1, H, W)`` float32: ``raw / 65536`` clipped to [0, 0.005] resp.
  [0, 0.08], rescaled to [-1, 1]. Every pixel is valid (the kinds treat NaN as invalid; none is produced here).

``augment=true`` flips training samples horizontally with probability 1/2 (the normal's x negated); there is no
random rescale or crop. Draws come from ``numpy.random.default_rng([seed, epoch, index])``, with ``seed`` and
``epoch`` set by :meth:`TaskonomySplit.set_epoch`, so a resumed run sees the same flips.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adapmtl_cli.data import register_dataset
from adapmtl_cli.data.base import Sample, bool_option, check_options, choice_option
from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.tasks import match_task
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.tasks.dense_regression import Edges, Keypoints, TaskonomyDepth, TaskonomyNormal, WeightedSegmentation

SPLIT_FILE = "taskonomy.json"
PRIOR_FILE = "semseg_prior_factor.npy"
FOLDERS = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
"""The modalities of one sample, in the order of each ``taskonomy.json`` entry."""
DOMAINS = {folder: "segmentsemantic" if folder == "segment_semantic" else folder for folder in FOLDERS}
"""Folder -> the ``domain_{d}`` part of its file names."""
TASK_FOLDERS = {
    "segmentation": "segment_semantic",
    "normal": "normal",
    "depth": "depth_zbuffer",
    "keypoints": "keypoints2d",
    "edges": "edge_texture",
}
"""Task name -> folder, in the order ``tasks`` reports them."""
TASKONOMY_CLASSES = ("background", *(f"class_{i}" for i in range(1, 17)))
"""Class ids 0..16 after decoding. Raw 2..17 are 16 COCO object classes whose exact subset we have not verified,
so they are named by their decoded id."""
INPUTS = ("caffe-bgr", "rgb01")
UNCERTAIN = ("background", "ignore")
CAFFE_MEAN_BGR = (104.01, 116.67, 122.68)
DEPTH_INVALID_RAW = 64500
KEYPOINTS_CLIP = 0.005
EDGES_CLIP = 0.08

_U16 = ("I;16", "I;16B", "I;16L", "I")
_MODES = {
    "rgb": (("RGB",), "an 8-bit RGB image"),
    "segment_semantic": (("L", "P"), "an 8-bit grey PNG (mode L or P)"),
    "normal": (("RGB",), "an 8-bit RGB PNG"),
    "depth_zbuffer": (_U16, "a 16-bit grey PNG"),
    "keypoints2d": (_U16, "a 16-bit grey PNG"),
    "edge_texture": (_U16, "a 16-bit grey PNG"),
}
_DOMAIN = re.compile(r"domain_([a-z0-9_]+)\.[a-z]+$")
_TOKENS = {token: folder for folder in FOLDERS for token in (folder, DOMAINS[folder])}
_MAX_PROBLEMS = 5
_DESCRIBE_SAMPLES = 64
_OPTIONS = {
    "augment": "true/false: random horizontal flip of train samples, normal x negated (no rescale or crop)",
    "input": "caffe-bgr (default: BGR 0..255 minus the Caffe mean) or rgb01 (RGB / 255)",
    "uncertain": "background (default: raw 0 merged into background, as AdaShare) or ignore",
}


def _q(path: Path | str) -> str:
    return repr(str(path))


def _raise_all(problems: list[str]) -> None:
    """Raise one ``DataError`` listing the first few problems, if there are any."""
    if problems:
        more = len(problems) - _MAX_PROBLEMS
        raise DataError("; ".join(problems[:_MAX_PROBLEMS] + ([f"and {more} more"] if more > 0 else [])))


# --- decoding (pure numpy) ------------------------------------------------------------------------------


def encode_input(rgb: np.ndarray, mode: str = "caffe-bgr") -> np.ndarray:
    """The network input (H, W, 3) float32 from an (H, W, 3) uint8 RGB image, for ``mode`` in :data:`INPUTS`."""
    if mode == "caffe-bgr":
        return rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    return rgb.astype(np.float32) / np.float32(255.0)


def decode_segmentation(raw: np.ndarray, uncertain: str = "background") -> np.ndarray:
    """Class ids (H, W) int64 0..16 from raw ids 0..17; raw 0 becomes 0 (background) or -1 (``ignore``)."""
    labels = raw.astype(np.int64) - 1
    labels[raw == 0] = 0 if uncertain == "background" else -1
    return labels


def decode_depth(raw: np.ndarray) -> np.ndarray:
    """``log(1 + raw) / log(65536)`` (H, W) float32, 0 where ``raw >= 64500`` (invalid)."""
    scaled = np.log1p(raw.astype(np.float64)) / math.log(65536.0)
    return np.where(raw < DEPTH_INVALID_RAW, scaled, 0.0).astype(np.float32)


def decode_normal(rgb: np.ndarray, depth_raw: np.ndarray | None = None) -> np.ndarray:
    """``rgb / 255 * 2 - 1`` (H, W, 3) float32; zero where the depth is invalid or the vector is shorter than 0.5."""
    normal = rgb.astype(np.float64) / 255.0 * 2.0 - 1.0
    invalid = np.linalg.norm(normal, axis=-1) < 0.5
    if depth_raw is not None:
        invalid |= depth_raw >= DEPTH_INVALID_RAW
    normal[invalid] = 0.0
    return normal.astype(np.float32)


def decode_clipped(raw: np.ndarray, clip: float) -> np.ndarray:
    """``raw / 65536`` clipped to ``[0, clip]`` and rescaled to [-1, 1], float32 (keypoints2d, edge_texture)."""
    value = np.clip(raw.astype(np.float64) / 65536.0, 0.0, clip)
    return (value / clip * 2.0 - 1.0).astype(np.float32)


# --- files ----------------------------------------------------------------------------------------------


def _read_png(path: Path, folder: str) -> np.ndarray:
    """The pixels of one file: uint8 (H, W[, 3]) or uint16 (H, W), after checking its mode and range."""
    modes, wanted = _MODES[folder]
    try:
        with Image.open(path) as image:
            if image.mode not in modes:
                raise DataError(f"{_q(path)} is a mode-{image.mode} image; {folder} must be {wanted}")
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{_q(path)} cannot be read as an image ({exc}); re-copy or re-save it") from None
    if modes is _U16:
        if array.size and (int(array.min()) < 0 or int(array.max()) > 65535):
            raise DataError(f"{_q(path)} holds values outside 0..65535; {folder} must be {wanted}")
        array = array.astype(np.uint16)
    return array


def _probe(path: Path, folder: str) -> tuple[int, int] | str:
    """The (H, W) of an image from its header (pixels are not decoded), or what is wrong with it."""
    modes, wanted = _MODES[folder]
    try:
        with Image.open(path) as image:
            mode, (width, height), fmt = image.mode, image.size, image.format
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        return f"{_q(path)} is not a readable image ({exc}); re-copy or re-save it"
    if mode not in modes:
        return f"{_q(path)} is a mode-{mode} image; {folder} must be {wanted}"
    if folder != "rgb" and fmt != "PNG":
        return f"{_q(path)} is a {fmt} file; {folder} must be a (lossless) PNG"
    return height, width


def read_prior(root: Path) -> tuple[float, ...]:
    """The 17 class weights of ``root/semseg_prior_factor.npy`` (finite, non-negative, not all 0)."""
    path = Path(root) / PRIOR_FILE
    if not path.is_file():
        raise DataError(
            f"{_q(path)} does not exist; a Taskonomy root needs the 17 segmentation class weights there "
            "(semseg_prior_factor.npy from the Taskonomy code, MIT licence)"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{_q(path)} is not a readable .npy file ({exc}); re-save it with numpy.save") from None
    size = len(TASKONOMY_CLASSES)
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf" or array.size != size:
        raise DataError(f"{_q(path)} holds {getattr(array, 'shape', '?')!r}; expected {size} numeric class weights")
    weights = array.astype(np.float64).ravel()
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise DataError(f"{_q(path)} holds negative, NaN or all-zero weights; expected {size} weights >= 0")
    return tuple(float(w) for w in weights)


def _load_index(root: Path) -> dict[str, Any]:
    """``root/taskonomy.json`` as a dict."""
    path = root / SPLIT_FILE
    if not root.is_dir():
        raise DataError(f"dataset root {_q(root)} does not exist; pass the folder that holds {SPLIT_FILE}")
    if not path.is_file():
        raise DataError(
            f"{_q(path)} does not exist; a Taskonomy root holds {SPLIT_FILE} (6 paths per sample) and {PRIOR_FILE}"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{_q(path)} is not valid JSON ({exc}); rewrite it") from None
    if not isinstance(index, dict):
        raise DataError(f"{_q(path)} holds a JSON {type(index).__name__}; expected an object of split lists")
    return index


def _split_key(index: dict[str, Any], split: str, path: Path) -> str:
    """The key of ``split`` in ``taskonomy.json``: ``val`` reads ``test`` (or ``val`` when there is no ``test``)."""
    candidates = {"train": ("train",), "val": ("test", "val"), "test": ("test", "val")}.get(split)
    if candidates is None:
        raise DataError(f"unknown split {split!r}; use 'train' or 'val'")
    for key in candidates:
        if key in index:
            return key
    keys = ", ".join(repr(k) for k in index) or "none"
    raise DataError(f"{_q(path)} has no {candidates[0]!r} list (its keys: {keys}); add the {split} samples")


def _path_problem(rel: str, folder: str) -> str | None:
    """What is wrong with the ``folder`` path ``rel`` of an entry, judged from the string alone."""
    if not rel:
        return f"its {folder} path is empty"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return f"its {folder} path {rel!r} is absolute; paths must be relative to the dataset root"
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if ".." in parts:
        return f"its {folder} path {rel!r} contains '..'; paths must stay inside the dataset root"
    # A path naming another modality (as a folder or its domain_ part) but not its own is a column mix-up.
    domain = _DOMAIN.search(parts[-1].lower())
    named = {_TOKENS[t] for t in (*[p.lower() for p in parts[:-1]], domain and domain.group(1)) if t in _TOKENS}
    if named and folder not in named:
        return (
            f"its {folder} path {rel!r} names {', '.join(sorted(named))}; entries list paths in the order "
            f"{', '.join(FOLDERS)}"
        )
    return None


def _entries(index: dict[str, Any], key: str, path: Path) -> list[tuple[str, ...]]:
    """The samples of ``index[key]`` as 6-tuples of relative paths, after checking their form."""
    raw = index[key]
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{_q(path)} key {key!r} must be a non-empty list of samples, got {str(raw)[:60]!r}")
    problems: list[str] = []
    entries: list[tuple[str, ...]] = []
    for i, entry in enumerate(raw):
        if not (isinstance(entry, list) and len(entry) == len(FOLDERS) and all(isinstance(p, str) for p in entry)):
            problems.append(
                f"{_q(path)} {key}[{i}] is {str(entry)[:60]!r}; expected {len(FOLDERS)} relative paths "
                f"({', '.join(FOLDERS)})"
            )
            continue
        for folder, rel in zip(FOLDERS, entry, strict=True):
            problem = _path_problem(rel, folder)
            if problem:
                problems.append(f"{_q(path)} {key}[{i}]: {problem}")
        entries.append(tuple(entry))
    _raise_all(problems)
    return entries


def _check_files(root: Path, entries: list[tuple[str, ...]], key: str) -> tuple[int, int]:
    """The common (H, W) of a split, after checking every file's header (existence, mode, size)."""
    inside = root.resolve()
    missing: dict[str, list[str]] = {}
    problems: list[str] = []
    size: tuple[int, int] | None = None
    first = ""
    for entry in entries:
        for folder, rel in zip(FOLDERS, entry, strict=True):
            path = root / rel
            if not path.is_file():
                missing.setdefault(folder, []).append(str(path))
                continue
            if not path.resolve().is_relative_to(inside):
                problems.append(f"{_q(path)} points outside the dataset root {_q(root)} (a symbolic link?)")
                continue
            found = _probe(path, folder)
            if isinstance(found, str):
                problems.append(found)
            elif size is None:
                size, first = found, str(path)
            elif found != size:
                problems.append(
                    f"{_q(path)} is {found[0]}x{found[1]} but {_q(first)} is {size[0]}x{size[1]}; every image of a "
                    "split must have one size: resize beforehand with nearest neighbour (as AdaShare does)"
                )
    lost = [
        f"{len(paths)} of {len(entries)} {folder} files of {key!r} are missing (first {_q(paths[0])}); "
        f"Taskonomy downloads come per modality: fetch {folder} too"
        for folder, paths in missing.items()
    ]
    _raise_all(lost + problems)
    assert size is not None
    return size


# --- dataset and adapter --------------------------------------------------------------------------------


class TaskonomySplit(Dataset[Sample]):
    """One validated split; item ``i`` decodes the rgb and the files of the selected tasks of entry ``i``."""

    def __init__(
        self,
        root: Path,
        key: str,
        entries: list[tuple[str, ...]],
        size: tuple[int, int],
        tasks: tuple[str, ...] = tuple(TASK_FOLDERS),
        *,
        input_mode: str = "caffe-bgr",
        uncertain: str = "background",
        augment: bool = False,
    ) -> None:
        self.root = root
        self.key = key
        self.entries = entries
        self.size = size
        self.tasks = tasks
        self.input_mode = input_mode
        self.uncertain = uncertain
        self.augment = augment
        self.epoch = 0
        self.seed = 0

    def __len__(self) -> int:
        return len(self.entries)

    def select(self, names: Sequence[str]) -> TaskonomySplit:
        """A copy that reads and returns only the targets of the tasks ``names`` (aliases accepted).

        Raises:
            ConfigError: a name matches none of the five Taskonomy tasks.
        """
        chosen = set()
        for name in names:
            task = match_task(name, list(TASK_FOLDERS))
            if task is None:
                raise ConfigError(f"Taskonomy has no task {name!r}; choose from {', '.join(TASK_FOLDERS)}")
            chosen.add(task)
        subset = copy.copy(self)
        subset.tasks = tuple(t for t in TASK_FOLDERS if t in chosen)
        return subset

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Fix the augmentation draws of the coming epoch: item ``i`` uses ``default_rng([seed, epoch, i])``."""
        self.epoch, self.seed = epoch, seed

    def read(self, folder: str, index: int) -> np.ndarray:
        """The raw pixels of ``folder`` for sample ``index`` (uint8 or uint16), checked against the split size."""
        path = self.root / self.entries[index][FOLDERS.index(folder)]
        array = _read_png(path, folder)
        if array.shape[:2] != self.size:
            raise DataError(f"{_q(path)} is {array.shape[0]}x{array.shape[1]}; the split's images are {self.size}")
        if folder == "segment_semantic" and array.size and int(array.max()) > len(TASKONOMY_CLASSES):
            raise DataError(
                f"{_q(path)} holds class id {int(array.max())}; Taskonomy segment_semantic is 0 (uncertain), "
                "1 (background), 2..17"
            )
        return array

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} is out of range for {len(self)} samples")
        index %= len(self)
        image = encode_input(self.read("rgb", index), self.input_mode)
        needs_depth = "depth" in self.tasks or "normal" in self.tasks
        depth_raw = self.read("depth_zbuffer", index) if needs_depth else None
        maps: dict[str, np.ndarray] = {}
        for task in self.tasks:
            if task == "segmentation":
                maps[task] = decode_segmentation(self.read("segment_semantic", index), self.uncertain)
            elif task == "normal":
                maps[task] = decode_normal(self.read("normal", index), depth_raw)
            elif task == "depth":
                assert depth_raw is not None
                maps[task] = decode_depth(depth_raw)
            else:
                clip = KEYPOINTS_CLIP if task == "keypoints" else EDGES_CLIP
                maps[task] = decode_clipped(self.read(TASK_FOLDERS[task], index), clip)
        if self.augment and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            image = image[:, ::-1]
            maps = {task: array[:, ::-1] for task, array in maps.items()}
            if "normal" in maps:
                maps["normal"] = maps["normal"] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
        targets = {
            task: torch.from_numpy(np.ascontiguousarray(a if task == "segmentation" else _chw(a)))
            for task, a in maps.items()
        }
        return torch.from_numpy(np.ascontiguousarray(_chw(image))), targets


def _chw(array: np.ndarray) -> np.ndarray:
    """HWC (or HW) -> CHW (or 1HW)."""
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class Taskonomy:
    """Adapter for the Tiny-Taskonomy ``taskonomy.json`` layout (``--data taskonomy``).

    Args:
        augment: random horizontal flip of the train split (see the module docstring).
        input_mode: ``caffe-bgr`` or ``rgb01``, how the rgb becomes the network input.
        uncertain: ``background`` or ``ignore``, what raw segment_semantic 0 becomes.
    """

    name = "taskonomy"

    def __init__(self, *, augment: bool = False, input_mode: str = "caffe-bgr", uncertain: str = "background") -> None:
        self.augment = augment
        self.input_mode = input_mode
        self.uncertain = uncertain

    def tasks(self, root: Path) -> list[TaskSpec]:
        """Segmentation (17 classes, weighted by the prior), normal, depth, keypoints and edges, in that order."""
        weights = read_prior(Path(root))
        segmentation = WeightedSegmentation(num_classes=len(TASKONOMY_CLASSES), class_weights=weights)
        return [segmentation, TaskonomyNormal(), TaskonomyDepth(), Keypoints(), Edges()]

    def open(self, root: Path, split: str) -> TaskonomySplit:
        """Validate ``split`` (``val`` = the ``test`` list) from the JSON and the image headers.

        Raises:
            DataError: the JSON is missing or malformed, a path is absolute, climbs out with ``..`` or leaves the
                root, a file is missing, unreadable or of the wrong mode, or image sizes differ.
        """
        root = Path(root)
        index = _load_index(root)
        key = _split_key(index, split, root / SPLIT_FILE)
        entries = _entries(index, key, root / SPLIT_FILE)
        size = _check_files(root, entries, key)
        return TaskonomySplit(
            root,
            key,
            entries,
            size,
            input_mode=self.input_mode,
            uncertain=self.uncertain,
            augment=self.augment and split == "train",
        )

    def describe(self, root: Path) -> dict[str, Any]:
        """See :meth:`DatasetAdapter.describe`; statistics come from the first 64 samples of val (else train).

        ``class_pixels`` counts decoded labels (uncertain pixels under background, or under ``ignore`` with
        ``uncertain=ignore``); extra keys: ``uncertain_pixels`` (raw 0) and ``class_weights`` (the prior).
        """
        root = Path(root)
        index = _load_index(root)
        splits: dict[str, dict[str, Any]] = {}
        opened: dict[str, TaskonomySplit] = {}
        for split in ("train", "val"):
            if not any(k in index for k in (("train",) if split == "train" else ("test", "val"))):
                continue
            opened[split] = data = self.open(root, split)
            splits[split] = {"folder": data.key, "samples": len(data), "size": list(data.size)}
        if not opened:
            raise DataError(f"{_q(root / SPLIT_FILE)} has neither a 'train' nor a 'test' list")
        sampled = opened.get("val", opened.get("train"))
        assert sampled is not None
        count = min(len(sampled), _DESCRIBE_SAMPLES)
        raw_pixels = np.zeros(len(TASKONOMY_CLASSES) + 1, dtype=np.int64)
        invalid = total = 0
        for i in range(count):
            raw_pixels += np.bincount(sampled.read("segment_semantic", i).ravel(), minlength=len(raw_pixels))
            depth = sampled.read("depth_zbuffer", i)
            invalid += int(np.count_nonzero(depth >= DEPTH_INVALID_RAW))
            total += depth.size
        uncertain = int(raw_pixels[0])
        pixels = raw_pixels[1:].tolist()
        if self.uncertain == "background":
            pixels[0] += uncertain
        return {
            "root": str(root),
            "layout": "taskonomy",
            "splits": splits,
            "tasks": [t.name for t in self.tasks(root)],
            "sampled": {"split": sampled.key, "samples": count},
            "class_pixels": {"ignore": uncertain if self.uncertain == "ignore" else 0}
            | dict(zip(TASKONOMY_CLASSES, pixels, strict=True)),
            "depth_invalid_ratio": invalid / total if total else None,
            "uncertain_pixels": uncertain,
            "class_weights": list(read_prior(root)),
        }


@register_dataset("taskonomy")
def _taskonomy(**options: str) -> Taskonomy:
    check_options("taskonomy", options, _OPTIONS)
    return Taskonomy(
        augment=bool_option("taskonomy", "augment", options["augment"]) if "augment" in options else False,
        input_mode=choice_option("taskonomy", "input", options.get("input", INPUTS[0]), INPUTS),
        uncertain=choice_option("taskonomy", "uncertain", options.get("uncertain", UNCERTAIN[0]), UNCERTAIN),
    )

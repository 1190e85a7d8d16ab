"""Tiny-Taskonomy in the AdaShare/DiSparse/AdapMTL layout (``taskonomy.json`` plus PNGs), registered as ``taskonomy``.

Layout. ``root/taskonomy.json`` maps split keys to lists of samples, each a list of 6 root-relative paths in the
order rgb, segment_semantic, normal, depth_zbuffer, keypoints2d, edge_texture. Keys: ``train`` and ``test`` (our
``val``), optionally ``heldout`` (our held-out ``test`` split, :data:`~adapmtl_cli.data.layouts.HELDOUT_KEY`;
``adapmtl data synth --layout taskonomy --test N`` writes it, real packs have none), ``train1``/``train2`` (the
halves AdaShare alternates between) and ``test_small``; only ``train``, ``test`` and ``heldout`` are read. Any
folder structure works (the old ``<building>/<folder>/<file>``, Omnidata's ``<folder>/taskonomy/<building>/<file>``,
AdapMTL's ``train/``-prefixed paths) as long as every path stays inside the root. ``root/semseg_prior_factor.npy``
holds the 17 class weights of the segmentation loss.

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

This module holds the split and the adapter; the checks of a folder are in ``taskonomy_files.py``, the decoding
formulas above in ``taskonomy_decode.py``, the file and folder names in ``layouts.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from adapmtl_cli.data.base import Sample, bool_option, check_options, choice_option
from adapmtl_cli.data.layouts import HELDOUT_KEY, INPUT_ENCODINGS, TASKONOMY_CLASSES, TASKONOMY_FOLDERS, TASKONOMY_JSON
from adapmtl_cli.data.problems import quoted
from adapmtl_cli.data.registry import register_dataset
from adapmtl_cli.data.taskonomy_decode import (
    DEPTH_INVALID_RAW,
    EDGES_CLIP,
    KEYPOINTS_CLIP,
    UNCERTAIN,
    decode_clipped,
    decode_depth,
    decode_normal,
    decode_segmentation,
    encode_input,
)
from adapmtl_cli.data.taskonomy_files import check_files, load_index, read_png, read_prior, split_entries, split_key
from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.tasks.dense_regression import Edges, Keypoints, TaskonomyDepth, TaskonomyNormal, WeightedSegmentation
from adapmtl_cli.tasks.registry import match_task

_TASK_FOLDERS = {
    "segmentation": "segment_semantic",
    "normal": "normal",
    "depth": "depth_zbuffer",
    "keypoints": "keypoints2d",
    "edges": "edge_texture",
}
"""Task name -> folder, in the order ``tasks`` reports them."""

_DESCRIBE_SAMPLES = 64
_OPTIONS = {
    "augment": "true/false: random horizontal flip of train samples, normal x negated (no rescale or crop)",
    "input": "caffe-bgr (default: BGR 0..255 minus the Caffe mean) or rgb01 (RGB / 255)",
    "uncertain": "background (default: raw 0 merged into background, as AdaShare) or ignore",
}


class TaskonomySplit(Dataset[Sample]):
    """One validated split; item ``i`` decodes the rgb and the files of the selected tasks of entry ``i``."""

    def __init__(
        self,
        root: Path,
        key: str,
        entries: list[tuple[str, ...]],
        size: tuple[int, int],
        tasks: tuple[str, ...] = tuple(_TASK_FOLDERS),
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
            task = match_task(name, list(_TASK_FOLDERS))
            if task is None:
                raise ConfigError(f"Taskonomy has no task {name!r}; choose from {', '.join(_TASK_FOLDERS)}")
            chosen.add(task)
        subset = copy.copy(self)
        subset.tasks = tuple(t for t in _TASK_FOLDERS if t in chosen)
        return subset

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Fix the augmentation draws of the coming epoch: item ``i`` uses ``default_rng([seed, epoch, i])``."""
        self.epoch, self.seed = epoch, seed

    def read(self, folder: str, index: int) -> np.ndarray:
        """The raw pixels of ``folder`` for sample ``index`` (uint8 or uint16), checked against the split size."""
        path = self.root / self.entries[index][TASKONOMY_FOLDERS.index(folder)]
        array = read_png(path, folder)
        if array.shape[:2] != self.size:
            raise DataError(f"{quoted(path)} is {array.shape[0]}x{array.shape[1]}; the split's images are {self.size}")
        if folder == "segment_semantic" and array.size and int(array.max()) > len(TASKONOMY_CLASSES):
            raise DataError(
                f"{quoted(path)} holds class id {int(array.max())}; Taskonomy segment_semantic is 0 (uncertain), "
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
                maps[task] = decode_clipped(self.read(_TASK_FOLDERS[task], index), clip)
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
        """Validate ``split`` (``val`` = the ``test`` list, ``test`` = the ``heldout`` list) from the JSON and headers.

        Raises:
            DataError: the JSON is missing or malformed, a path is absolute, climbs out with ``..`` or leaves the
                root, a file is missing, unreadable or of the wrong mode, or image sizes differ.
        """
        root = Path(root)
        index = load_index(root)
        key = split_key(index, split, root / TASKONOMY_JSON)
        entries = split_entries(index, key, root / TASKONOMY_JSON)
        size = check_files(root, entries, key)
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

        ``test`` is listed when the JSON has a ``heldout`` list.

        ``class_pixels`` counts decoded labels (uncertain pixels under background, or under ``ignore`` with
        ``uncertain=ignore``); extra keys: ``uncertain_pixels`` (raw 0) and ``class_weights`` (the prior).
        """
        root = Path(root)
        index = load_index(root)
        splits: dict[str, dict[str, Any]] = {}
        opened: dict[str, TaskonomySplit] = {}
        for split, keys in (("train", ("train",)), ("val", ("test", "val")), ("test", (HELDOUT_KEY,))):
            if not any(k in index for k in keys):
                continue
            opened[split] = data = self.open(root, split)
            splits[split] = {"folder": data.key, "samples": len(data), "size": list(data.size)}
        if not opened:
            raise DataError(f"{quoted(root / TASKONOMY_JSON)} has neither a 'train' nor a 'test' list")
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
        input_mode=choice_option("taskonomy", "input", options.get("input", INPUT_ENCODINGS[0]), INPUT_ENCODINGS),
        uncertain=choice_option("taskonomy", "uncertain", options.get("uncertain", UNCERTAIN[0]), UNCERTAIN),
    )

"""NYU-v2 in the MTAN/LibMTL ``.npy`` layout, and the ``nyuv2``/``synthetic`` registrations that pick a layout.

``root/{train,val,test}/{image,label,depth,normal}/{i}.npy`` holds one HWC array per sample, ``i = 0..N-1``
(``test/``, the held-out split, is optional; ``val`` falls back to ``test/`` when there is no ``val/``, as some
NYU-v2 copies name their only evaluation folder so):
image (H, W, 3) RGB in [0, 1]; label (H, W) class ids 0..12 stored as floats (whole numbers) or ints, -1 = ignore;
depth (H, W, 1) or (H, W) metres, 0 = invalid; normal (H, W, 3) unit vectors, all-zero = invalid. ``open``
checks the layout from the ``.npy`` headers alone (names, counts, shapes, dtypes, truncation), so a bad folder
fails at once with the file named, while the per-item loads stay light.

``--data nyuv2`` detects the layout of each root (:func:`~adapmtl_cli.data.layouts.detect_layout`):
``nyu_v2_3task.json`` means the AdaShare layout (``nyuv2_adashare.py``), a ``train/``, ``val/`` or ``test/``
folder the MTAN one.
``--data synthetic`` is the MTAN layout. Both take ``augment=true`` (``augment.py``, train split only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset

from adapmtl_cli.data.augment import AugmentedSplit
from adapmtl_cli.data.base import Sample, bool_option, check_options, choice_option, unknown_split
from adapmtl_cli.data.layouts import (
    ADASHARE_JSON,
    MTAN_TASK_FOLDERS,
    NYU13_CLASSES,
    NYUV2_LAYOUTS,
    detect_layout,
)
from adapmtl_cli.data.npy import load_npy, read_npy_header
from adapmtl_cli.data.nyuv2_adashare import NyuV2AdaShare
from adapmtl_cli.data.problems import quoted, raise_problems
from adapmtl_cli.data.registry import register_dataset
from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.tasks.checks import class_ids
from adapmtl_cli.tasks.registry import get_task

_INDEX_NAME = re.compile(r"0|[1-9][0-9]*")
_TRAILING = {"image": ((3,),), "label": ((),), "depth": ((1,), ()), "normal": ((3,),)}
_DESCRIBE_SAMPLES = 64


def _indexed_files(folder: Path) -> tuple[int, list[str]]:
    """How many ``{i}.npy`` files ``folder`` holds, and what is wrong with their names."""
    stems = [p.stem for p in folder.glob("*.npy")]
    problems = [
        f"{quoted(folder / (s + '.npy'))} is not named by a sample index; name files 0.npy, 1.npy, ..."
        for s in sorted(stems)
        if not _INDEX_NAME.fullmatch(s)
    ]
    if problems:
        return len(stems), problems
    missing = sorted(set(range(len(stems))) - {int(s) for s in stems})
    if missing:
        problems.append(
            f"{quoted(folder)} holds {len(stems)} files but {missing[0]}.npy is missing; files must be named "
            f"0.npy..{len(stems) - 1}.npy with no gaps"
        )
    return len(stems), problems


def _other_layout(root: Path) -> str:
    """A hint for error messages when ``root`` is in the AdaShare layout instead."""
    if (root / ADASHARE_JSON).is_file():
        return f" (it holds {ADASHARE_JSON}, the AdaShare layout: use --data nyuv2 with layout auto or adashare)"
    return ""


def _resolve_split(root: Path, split: str) -> Path:
    """The folder of ``split``; ``val`` falls back to ``test/`` when there is no ``val/``, ``test`` never falls back.

    Raises:
        DataError: the root or the split's folder does not exist (one line naming it), or the split is unknown.
    """
    if not root.is_dir():
        raise DataError(f"dataset root {quoted(root)} does not exist; pass the folder that holds train/ and val/")
    candidates = {"train": ("train",), "val": ("val", "test"), "test": ("test",)}.get(split)
    if candidates is None:
        raise unknown_split(split)
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    if split == "test":
        raise DataError(
            f"split folder {quoted(root / 'test')} does not exist, so there is no held-out test split; evaluate "
            f"on val (--eval-split val) or generate one (adapmtl data synth ROOT --test N){_other_layout(root)}"
        )
    raise DataError(
        f"split folder {quoted(root / split)} does not exist; pass a root holding train/ and val/{_other_layout(root)}"
    )


def _reference_split(root: Path) -> Path:
    """The split whose task folders define the dataset's tasks: train if present, else val."""
    if not root.is_dir():
        raise DataError(f"dataset root {quoted(root)} does not exist; pass the folder that holds train/ and val/")
    for name in ("train", "val", "test"):
        if (root / name).is_dir():
            return root / name
    hint = _other_layout(root)
    raise DataError(f"dataset root {quoted(root)} holds no train/ or val/ folder; expected the MTAN .npy layout{hint}")


class NpySplit(Dataset[Sample]):
    """One validated split; item ``i`` reads ``{folder}/{i}.npy`` for the image and every task folder."""

    def __init__(self, folder: Path, length: int, size: tuple[int, int], task_folders: tuple[str, ...]) -> None:
        self.folder = folder
        self.length = length
        self.size = size
        self.task_folders = task_folders

    def __len__(self) -> int:
        return self.length

    def array(self, folder: str, index: int) -> np.ndarray:
        """The raw stored array of ``folder`` for sample ``index``, checked to be finite."""
        return load_npy(self.folder / folder / f"{index}.npy")

    def label(self, index: int) -> np.ndarray:
        """The class ids of sample ``index`` as int64, checked to be whole numbers in -1..12."""
        path = self.folder / "label" / f"{index}.npy"
        label = class_ids(self.array("label", index), quoted(path))
        low, high = int(label.min()), int(label.max())
        if low < -1 or high >= len(NYU13_CLASSES):
            bad = low if low < -1 else high
            raise DataError(f"{quoted(path)} holds class id {bad!r}; NYU-13 labels are 0..12 with -1 = ignore")
        return label

    def __getitem__(self, index: int) -> Sample:
        if not -self.length <= index < self.length:
            raise IndexError(f"sample {index} is out of range for {self.length} samples")
        index %= self.length
        image = torch.from_numpy(_channels_first(self.array("image", index)))
        targets: dict[str, torch.Tensor] = {}
        for folder in self.task_folders:
            if folder == "label":
                targets["segmentation"] = torch.from_numpy(self.label(index))
            else:
                targets[MTAN_TASK_FOLDERS[folder]] = torch.from_numpy(_channels_first(self.array(folder, index)))
        return image, targets


def _channels_first(array: np.ndarray) -> np.ndarray:
    """HWC (or HW) -> contiguous float32 CHW."""
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32)


class NyuV2Npy:
    """Adapter for the MTAN/LibMTL NYU-v2 ``.npy`` layout (``nyuv2``), also used for synthetic scenes.

    Args:
        name: the ``--data`` value it was built for.
        augment: wrap the train split in :class:`AugmentedSplit` (random scale and flip, normal x negated).
    """

    def __init__(self, name: str = "nyuv2", *, augment: bool = False) -> None:
        self.name = name
        self.augment = augment

    def task_folders(self, root: Path) -> tuple[str, ...]:
        """The task folders of the reference split (train, else val), in the fixed task order."""
        reference = _reference_split(Path(root))
        found = tuple(f for f in MTAN_TASK_FOLDERS if (reference / f).is_dir())
        if not found:
            raise DataError(
                f"{quoted(reference)} holds no task folder (label/, depth/ or normal/); expected the MTAN .npy layout"
            )
        return found

    def tasks(self, root: Path) -> list[TaskSpec]:
        """Segmentation (13 classes), depth and normal, for those whose folder exists."""
        kwargs = {"segmentation": {"num_classes": len(NYU13_CLASSES)}}
        return [get_task(MTAN_TASK_FOLDERS[f], **kwargs.get(MTAN_TASK_FOLDERS[f], {})) for f in self.task_folders(root)]

    def describe(self, root: Path) -> dict[str, object]:
        """See :meth:`DatasetAdapter.describe`."""
        return describe(root)

    def open(self, root: Path, split: str) -> NpySplit | AugmentedSplit:
        """Validate ``split`` under ``root`` from the file headers and return it as a dataset.

        With ``augment``, the train split comes wrapped in :class:`AugmentedSplit`.

        Raises:
            DataError: a folder is missing, file names have gaps, counts differ between folders, or a file
                is unreadable, pickled, truncated, or has the wrong shape.
        """
        root = Path(root)
        folder = _resolve_split(root, split)
        task_folders = self.task_folders(root)
        if not (folder / "image").is_dir():
            raise DataError(f"{quoted(folder / 'image')} does not exist; every split needs an image/ folder")
        length, problems = _indexed_files(folder / "image")
        if length == 0:
            raise DataError(f"{quoted(folder / 'image')} holds no .npy files; expected 0.npy, 1.npy, ...")
        for name in task_folders:
            sub = folder / name
            if not sub.is_dir():
                reference = quoted(_reference_split(root))
                problems.append(f"{quoted(folder)} lacks the {name}/ folder that {reference} has")
                continue
            count, naming = _indexed_files(sub)
            if count != length:
                problems.append(
                    f"{quoted(sub)} holds {count} files but {quoted(folder / 'image')} holds {length}; every task "
                    "folder needs one file per image"
                )
            else:
                problems += naming
        raise_problems(problems)
        size = _check_shapes(folder, length, task_folders)
        data = NpySplit(folder, length, size, task_folders)
        if self.augment and split == "train":
            return AugmentedSplit(data, {MTAN_TASK_FOLDERS[f]: MTAN_TASK_FOLDERS[f] for f in task_folders})
        return data


def _check_shapes(folder: Path, length: int, task_folders: tuple[str, ...]) -> tuple[int, int]:
    """The common (H, W) of a split, after checking every file's header against it."""
    first = folder / "image" / "0.npy"
    shape, _ = read_npy_header(first)
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(f"{quoted(first)} has shape {shape!r}; expected (H, W, 3) RGB")
    size = (shape[0], shape[1])
    problems = []
    for name in ("image", *task_folders):
        allowed = [size + trailing for trailing in _TRAILING[name]]
        for i in range(length):
            path = folder / name / f"{i}.npy"
            shape, _ = read_npy_header(path)
            if shape not in allowed:
                wanted = " or ".join(repr(a) for a in allowed)
                problems.append(f"{quoted(path)} has shape {shape!r}, expected {wanted} to match {quoted(first)}")
    raise_problems(problems)
    return size


def describe(root: Path) -> dict[str, object]:
    """Summarise a dataset folder: samples and size per split, tasks, and label/depth statistics.

    The class histogram (pixels per class, plus ``ignore``) and the invalid-depth ratio come from the first
    64 samples of the validation split (train when there is none). Opening each split validates it. ``test``
    is listed when the root holds a ``test/`` folder that ``val`` does not already read.
    """
    adapter = NyuV2Npy()
    root = Path(root)
    splits: dict[str, dict[str, object]] = {}
    opened: dict[str, NpySplit] = {}
    for split in ("train", "val", "test"):
        try:
            folder = _resolve_split(root, split)
        except DataError:
            if root.is_dir():
                continue
            raise
        if any(data.folder == folder for data in opened.values()):
            continue  # a root with test/ and no val/ reads test/ as val: list it once
        opened[split] = data = cast(NpySplit, adapter.open(root, split))  # never augmented: no augment option
        splits[split] = {"folder": folder.name, "samples": len(data), "size": list(data.size)}
    if not opened:
        raise DataError(
            f"dataset root {quoted(root)} holds no train/ or val/ folder; expected the MTAN layout{_other_layout(root)}"
        )
    sampled = opened["val"] if "val" in opened else opened["train"]
    count = min(len(sampled), _DESCRIBE_SAMPLES)
    pixels = np.zeros(len(NYU13_CLASSES) + 1, dtype=np.int64)
    invalid = total = 0
    for i in range(count):
        if "label" in sampled.task_folders:
            pixels += np.bincount(sampled.label(i).ravel() + 1, minlength=len(pixels))
        if "depth" in sampled.task_folders:
            depth = sampled.array("depth", i)
            invalid += int(np.count_nonzero(depth == 0))
            total += depth.size
    return {
        "root": str(root),
        "layout": "mtan",
        "splits": splits,
        "tasks": [t.name for t in adapter.tasks(root)],
        "sampled": {"split": sampled.folder.name, "samples": count},
        "class_pixels": dict(zip(("ignore", *NYU13_CLASSES), pixels.tolist(), strict=True)),
        "depth_invalid_ratio": invalid / total if total else None,
    }


_LAYOUT_CHOICES = ("auto", *NYUV2_LAYOUTS)
_ADASHARE_ONLY = ("normals", "input")
_OPTIONS = {
    "layout": "auto (default: from the folder's files), mtan or adashare",
    "augment": "true or false (default): random scale and horizontal flip of the train split",
    "normals": "unit (default) or adashare: the AdaShare layout's normal targets",
    "input": "caffe-bgr (default) or rgb01: the AdaShare layout's image encoding",
}


class NyuV2:
    """``--data nyuv2`` with ``layout=auto``: opens each root with the adapter of the layout found there.

    Args:
        name: the ``--data`` value.
        augment: passed on to the layout's adapter.
        adashare_options: ``normals``/``input`` as given; a ``ConfigError`` when the root is in the MTAN layout.
    """

    def __init__(
        self, name: str = "nyuv2", *, augment: bool = False, adashare_options: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.augment = augment
        self.adashare_options = dict(adashare_options or {})

    def resolve(self, root: Path) -> NyuV2Npy | NyuV2AdaShare:
        """The adapter for ``root``'s layout (see :func:`detect_layout`)."""
        if detect_layout(root) == "mtan":
            if self.adashare_options:
                given = ", ".join(f"{k}={v!r}" for k, v in self.adashare_options.items())
                raise ConfigError(
                    f"--data {self.name} option {given} applies to the AdaShare layout only, but {quoted(Path(root))} "
                    "is in the MTAN layout; drop it"
                )
            return NyuV2Npy(self.name, augment=self.augment)
        return _adashare(self.name, self.augment, self.adashare_options)

    def tasks(self, root: Path) -> list[TaskSpec]:
        """The tasks of the layout found at ``root``."""
        return self.resolve(root).tasks(root)

    def open(self, root: Path, split: str) -> Dataset[Sample]:
        """``split`` of the layout found at ``root``."""
        return self.resolve(root).open(root, split)

    def describe(self, root: Path) -> dict[str, object]:
        """See :meth:`DatasetAdapter.describe`; ``layout`` says which layout was found."""
        return self.resolve(root).describe(root)


def _adashare(name: str, augment: bool, options: Mapping[str, str]) -> NyuV2AdaShare:
    """The AdaShare-layout adapter for the ``normals``/``input`` options as given (their values are checked)."""
    return NyuV2AdaShare(
        name, augment=augment, normals=options.get("normals", "unit"), input_format=options.get("input", "caffe-bgr")
    )


@register_dataset("nyuv2")
def _nyuv2(**options: str) -> NyuV2 | NyuV2Npy | NyuV2AdaShare:
    check_options("nyuv2", options, _OPTIONS)
    layout = choice_option("nyuv2", "layout", options.get("layout", "auto"), _LAYOUT_CHOICES)
    augment = bool_option("nyuv2", "augment", options["augment"]) if "augment" in options else False
    adashare_options = {k: options[k] for k in _ADASHARE_ONLY if k in options}
    if layout == "mtan":
        if adashare_options:
            given = ", ".join(f"{k}={v!r}" for k, v in adashare_options.items())
            raise ConfigError(f"--data nyuv2 option {given} applies to layout=adashare only, not layout=mtan; drop it")
        return NyuV2Npy("nyuv2", augment=augment)
    adapter = _adashare("nyuv2", augment, adashare_options)  # checks the option values even when auto
    return adapter if layout == "adashare" else NyuV2("nyuv2", augment=augment, adashare_options=adashare_options)


@register_dataset("synthetic")
def _synthetic(**options: str) -> NyuV2Npy:
    check_options("synthetic", options, {"augment": _OPTIONS["augment"]})
    augment = bool_option("synthetic", "augment", options["augment"]) if "augment" in options else False
    return NyuV2Npy("synthetic", augment=augment)

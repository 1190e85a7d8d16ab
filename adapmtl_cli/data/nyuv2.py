"""NYU-v2 in the MTAN/LibMTL ``.npy`` layout, registered as ``nyuv2`` and as ``synthetic`` (same layout).

``root/{train,val}/{image,label,depth,normal}/{i}.npy`` holds one HWC array per sample, ``i = 0..N-1``:
image (H, W, 3) RGB in [0, 1]; label (H, W) class ids 0..12 stored as floats, -1 = ignore; depth (H, W, 1) or
(H, W) metres, 0 = invalid; normal (H, W, 3) unit vectors, all-zero = invalid. ``open`` checks the layout from
the ``.npy`` headers alone (names, counts, shapes, dtypes, truncation), so a bad folder fails at once with the
file named, while the per-item loads stay light.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from adapmtl_cli.data import register_dataset
from adapmtl_cli.data.base import Sample, check_options
from adapmtl_cli.data.synthetic import NYU13_CLASSES
from adapmtl_cli.errors import DataError
from adapmtl_cli.tasks import get_task
from adapmtl_cli.tasks.base import TaskSpec

TASK_FOLDERS = {"label": "segmentation", "depth": "depth", "normal": "normal"}
"""Task folder -> task name, in the order tasks are reported."""

_INDEX_NAME = re.compile(r"0|[1-9][0-9]*")
_TRAILING = {"image": ((3,),), "label": ((),), "depth": ((1,), ()), "normal": ((3,),)}
_MAX_PROBLEMS = 5
_DESCRIBE_SAMPLES = 64


def _q(path: Path) -> str:
    return repr(str(path))


def _raise_all(problems: list[str]) -> None:
    """Raise one ``DataError`` listing the first few problems, if there are any."""
    if problems:
        more = len(problems) - _MAX_PROBLEMS
        shown = problems[:_MAX_PROBLEMS] + ([f"and {more} more"] if more > 0 else [])
        raise DataError("; ".join(shown))


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header; also refuses pickled and truncated files."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 only differs by a utf-8 header, which the memory-mapped loader parses for us
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = array.shape, array.dtype
                f.seek(array.offset)
            if dtype.hasobject:
                raise DataError(
                    f"{_q(path)} holds Python objects (dtype {str(dtype)!r}); unpickling is refused, "
                    "save plain numeric arrays with numpy.save"
                )
            expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
            actual = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, EOFError) as exc:
        msg = f"{_q(path)} is not a readable .npy file ({exc}); re-save it with numpy.save"
        raise DataError(msg) from None
    if actual < expected:
        raise DataError(f"{_q(path)} is truncated ({actual} bytes, its header needs {expected}); re-copy it")
    if dtype.kind not in "biuf":
        raise DataError(f"{_q(path)} has dtype {str(dtype)!r}; expected a numeric array (float or int)")
    return tuple(shape), dtype


def _indexed_files(folder: Path) -> tuple[int, list[str]]:
    """How many ``{i}.npy`` files ``folder`` holds, and what is wrong with their names."""
    stems = [p.stem for p in folder.glob("*.npy")]
    problems = [
        f"{_q(folder / (s + '.npy'))} is not named by a sample index; name files 0.npy, 1.npy, ..."
        for s in sorted(stems)
        if not _INDEX_NAME.fullmatch(s)
    ]
    if problems:
        return len(stems), problems
    missing = sorted(set(range(len(stems))) - {int(s) for s in stems})
    if missing:
        problems.append(
            f"{_q(folder)} holds {len(stems)} files but {missing[0]}.npy is missing; files must be named "
            f"0.npy..{len(stems) - 1}.npy with no gaps"
        )
    return len(stems), problems


def _resolve_split(root: Path, split: str) -> Path:
    """The folder of ``split``; ``val`` falls back to ``test/`` (and ``test`` to ``val/``) when absent."""
    if not root.is_dir():
        raise DataError(f"dataset root {_q(root)} does not exist; pass the folder that holds train/ and val/")
    candidates = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}.get(split)
    if candidates is None:
        raise DataError(f"unknown split {split!r}; use 'train' or 'val'")
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"split folder {_q(root / split)} does not exist; pass a root holding train/ and val/")


def _reference_split(root: Path) -> Path:
    """The split whose task folders define the dataset's tasks: train if present, else val."""
    if not root.is_dir():
        raise DataError(f"dataset root {_q(root)} does not exist; pass the folder that holds train/ and val/")
    for name in ("train", "val", "test"):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"dataset root {_q(root)} holds no train/ or val/ folder; expected the MTAN .npy layout")


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
        path = self.folder / folder / f"{index}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{_q(path)} cannot be read ({exc}); re-save it with numpy.save") from None
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"{_q(path)} holds NaN or infinite values; fix or drop this sample")
        return array

    def label(self, index: int) -> np.ndarray:
        """The class ids of sample ``index`` as int64, checked to lie in -1..12."""
        label = np.rint(self.array("label", index)).astype(np.int64)
        low, high = int(label.min()), int(label.max())
        if low < -1 or high >= len(NYU13_CLASSES):
            path = self.folder / "label" / f"{index}.npy"
            bad = low if low < -1 else high
            raise DataError(f"{_q(path)} holds class id {bad!r}; NYU-13 labels are 0..12 with -1 = ignore")
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
                targets[TASK_FOLDERS[folder]] = torch.from_numpy(_channels_first(self.array(folder, index)))
        return image, targets


def _channels_first(array: np.ndarray) -> np.ndarray:
    """HWC (or HW) -> contiguous float32 CHW."""
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32)


class NyuV2Npy:
    """Adapter for the MTAN/LibMTL NYU-v2 ``.npy`` layout (``nyuv2``), also used for synthetic scenes."""

    def __init__(self, name: str = "nyuv2") -> None:
        self.name = name

    def task_folders(self, root: Path) -> tuple[str, ...]:
        """The task folders of the reference split (train, else val), in the fixed task order."""
        reference = _reference_split(Path(root))
        found = tuple(f for f in TASK_FOLDERS if (reference / f).is_dir())
        if not found:
            raise DataError(
                f"{_q(reference)} holds no task folder (label/, depth/ or normal/); expected the MTAN .npy layout"
            )
        return found

    def tasks(self, root: Path) -> list[TaskSpec]:
        """Segmentation (13 classes), depth and normal, for those whose folder exists."""
        kwargs = {"segmentation": {"num_classes": len(NYU13_CLASSES)}}
        return [get_task(TASK_FOLDERS[f], **kwargs.get(TASK_FOLDERS[f], {})) for f in self.task_folders(root)]

    def describe(self, root: Path) -> dict[str, object]:
        """See :meth:`DatasetAdapter.describe`."""
        return describe(root)

    def open(self, root: Path, split: str) -> NpySplit:
        """Validate ``split`` under ``root`` from the file headers and return it as a dataset.

        Raises:
            DataError: a folder is missing, file names have gaps, counts differ between folders, or a file
                is unreadable, pickled, truncated, or has the wrong shape.
        """
        root = Path(root)
        folder = _resolve_split(root, split)
        task_folders = self.task_folders(root)
        if not (folder / "image").is_dir():
            raise DataError(f"{_q(folder / 'image')} does not exist; every split needs an image/ folder")
        length, problems = _indexed_files(folder / "image")
        if length == 0:
            raise DataError(f"{_q(folder / 'image')} holds no .npy files; expected 0.npy, 1.npy, ...")
        for name in task_folders:
            sub = folder / name
            if not sub.is_dir():
                reference = _q(_reference_split(root))
                problems.append(f"{_q(folder)} lacks the {name}/ folder that {reference} has")
                continue
            count, naming = _indexed_files(sub)
            if count != length:
                problems.append(
                    f"{_q(sub)} holds {count} files but {_q(folder / 'image')} holds {length}; every task "
                    "folder needs one file per image"
                )
            else:
                problems += naming
        _raise_all(problems)
        size = _check_shapes(folder, length, task_folders)
        return NpySplit(folder, length, size, task_folders)


def _check_shapes(folder: Path, length: int, task_folders: tuple[str, ...]) -> tuple[int, int]:
    """The common (H, W) of a split, after checking every file's header against it."""
    first = folder / "image" / "0.npy"
    shape, _ = _read_header(first)
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(f"{_q(first)} has shape {shape!r}; expected (H, W, 3) RGB")
    size = (shape[0], shape[1])
    problems = []
    for name in ("image", *task_folders):
        allowed = [size + trailing for trailing in _TRAILING[name]]
        for i in range(length):
            path = folder / name / f"{i}.npy"
            shape, _ = _read_header(path)
            if shape not in allowed:
                wanted = " or ".join(repr(a) for a in allowed)
                problems.append(f"{_q(path)} has shape {shape!r}, expected {wanted} to match {_q(first)}")
    _raise_all(problems)
    return size


def describe(root: Path) -> dict[str, object]:
    """Summarise a dataset folder: samples and size per split, tasks, and label/depth statistics.

    The class histogram (pixels per class, plus ``ignore``) and the invalid-depth ratio come from the first
    64 samples of the validation split (train when there is none). Opening each split validates it.
    """
    adapter = NyuV2Npy()
    root = Path(root)
    splits: dict[str, dict[str, object]] = {}
    opened: dict[str, NpySplit] = {}
    for split in ("train", "val"):
        try:
            folder = _resolve_split(root, split)
        except DataError:
            if root.is_dir():
                continue
            raise
        opened[split] = data = adapter.open(root, split)
        splits[split] = {"folder": folder.name, "samples": len(data), "size": list(data.size)}
    if not opened:
        raise DataError(f"dataset root {_q(root)} holds no train/ or val/ folder; expected the MTAN layout")
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


@register_dataset("nyuv2")
def _nyuv2(**options: str) -> NyuV2Npy:
    check_options("nyuv2", options, {})
    return NyuV2Npy("nyuv2")


@register_dataset("synthetic")
def _synthetic(**options: str) -> NyuV2Npy:
    check_options("synthetic", options, {})
    return NyuV2Npy("synthetic")

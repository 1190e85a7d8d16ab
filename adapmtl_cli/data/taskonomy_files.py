"""Checking a Tiny-Taskonomy folder before training: its ``taskonomy.json``, class prior and image headers.

Everything here runs when a split is opened, from the JSON and the image headers alone (no pixel is decoded
except by :func:`read_png`, which the split calls per item), so a bad folder fails at once with the file named.
The layout itself is described in the module docstring of ``adapmtl_cli.data.taskonomy``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from adapmtl_cli.data.base import unknown_split
from adapmtl_cli.data.layouts import (
    HELDOUT_KEY,
    TASKONOMY_CLASSES,
    TASKONOMY_DOMAINS,
    TASKONOMY_FOLDERS,
    TASKONOMY_JSON,
    TASKONOMY_PRIOR,
)
from adapmtl_cli.data.problems import quoted, raise_problems
from adapmtl_cli.errors import DataError
from adapmtl_cli.files.reading import read_json

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
_TOKENS = {token: folder for folder in TASKONOMY_FOLDERS for token in (folder, TASKONOMY_DOMAINS[folder])}


def read_png(path: Path, folder: str) -> np.ndarray:
    """The pixels of one file: uint8 (H, W[, 3]) or uint16 (H, W), after checking its mode and range."""
    modes, wanted = _MODES[folder]
    try:
        with Image.open(path) as image:
            if image.mode not in modes:
                raise DataError(f"{quoted(path)} is a mode-{image.mode} image; {folder} must be {wanted}")
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{quoted(path)} cannot be read as an image ({exc}); re-copy or re-save it") from None
    if modes is _U16:
        if array.size and (int(array.min()) < 0 or int(array.max()) > 65535):
            raise DataError(f"{quoted(path)} holds values outside 0..65535; {folder} must be {wanted}")
        array = array.astype(np.uint16)
    return array


def _probe(path: Path, folder: str) -> tuple[int, int] | str:
    """The (H, W) of an image from its header (pixels are not decoded), or what is wrong with it."""
    modes, wanted = _MODES[folder]
    try:
        with Image.open(path) as image:
            mode, (width, height), fmt = image.mode, image.size, image.format
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        return f"{quoted(path)} is not a readable image ({exc}); re-copy or re-save it"
    if mode not in modes:
        return f"{quoted(path)} is a mode-{mode} image; {folder} must be {wanted}"
    if folder != "rgb" and fmt != "PNG":
        return f"{quoted(path)} is a {fmt} file; {folder} must be a (lossless) PNG"
    return height, width


def read_prior(root: Path) -> tuple[float, ...]:
    """The 17 class weights of ``root/semseg_prior_factor.npy`` (finite, non-negative, not all 0)."""
    path = Path(root) / TASKONOMY_PRIOR
    if not path.is_file():
        raise DataError(
            f"{quoted(path)} does not exist; a Taskonomy root needs the 17 segmentation class weights there "
            "(semseg_prior_factor.npy from the Taskonomy code, MIT licence)"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{quoted(path)} is not a readable .npy file ({exc}); re-save it with numpy.save") from None
    size = len(TASKONOMY_CLASSES)
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf" or array.size != size:
        raise DataError(f"{quoted(path)} holds {getattr(array, 'shape', '?')!r}; expected {size} numeric class weights")
    weights = array.astype(np.float64).ravel()
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise DataError(f"{quoted(path)} holds negative, NaN or all-zero weights; expected {size} weights >= 0")
    return tuple(float(w) for w in weights)


def load_index(root: Path) -> dict[str, Any]:
    """``root/taskonomy.json`` as a dict."""
    path = root / TASKONOMY_JSON
    if not root.is_dir():
        raise DataError(f"dataset root {quoted(root)} does not exist; pass the folder that holds {TASKONOMY_JSON}")
    if not path.is_file():
        raise DataError(
            f"{quoted(path)} does not exist; a Taskonomy root holds {TASKONOMY_JSON} (6 paths per sample) and "
            f"{TASKONOMY_PRIOR}"
        )
    # Not UTF-8, not JSON, nested too deep, unreadable: one DataError naming the file (files/reading.py).
    index = read_json(path, DataError, "", "rewrite it")
    if not isinstance(index, dict):
        raise DataError(f"{quoted(path)} holds a JSON {type(index).__name__}; expected an object of split lists")
    return index


def split_key(index: dict[str, Any], split: str, path: Path) -> str:
    """The key of ``split`` in ``taskonomy.json``: ``val`` reads ``test`` (or ``val`` when there is no ``test``),
    ``test`` reads ``heldout`` (:data:`~adapmtl_cli.data.layouts.HELDOUT_KEY`) and nothing else."""
    candidates = {"train": ("train",), "val": ("test", "val"), "test": (HELDOUT_KEY,)}.get(split)
    if candidates is None:
        raise unknown_split(split)
    for key in candidates:
        if key in index:
            return key
    keys = ", ".join(repr(k) for k in index) or "none"
    if split == "test":
        raise DataError(
            f"{quoted(path)} has no {HELDOUT_KEY!r} list (its keys: {keys}), so there is no held-out test split (its "
            "'test' list is our val); evaluate on val (--eval-split val) or generate one (adapmtl data synth ROOT "
            "--layout taskonomy --test N)"
        )
    raise DataError(f"{quoted(path)} has no {candidates[0]!r} list (its keys: {keys}); add the {split} samples")


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
            f"{', '.join(TASKONOMY_FOLDERS)}"
        )
    return None


def split_entries(index: dict[str, Any], key: str, path: Path) -> list[tuple[str, ...]]:
    """The samples of ``index[key]`` as 6-tuples of relative paths, after checking their form."""
    raw = index[key]
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{quoted(path)} key {key!r} must be a non-empty list of samples, got {str(raw)[:60]!r}")
    problems: list[str] = []
    entries: list[tuple[str, ...]] = []
    for i, entry in enumerate(raw):
        six_paths = isinstance(entry, list) and len(entry) == len(TASKONOMY_FOLDERS)
        if not (six_paths and all(isinstance(p, str) for p in entry)):
            problems.append(
                f"{quoted(path)} {key}[{i}] is {str(entry)[:60]!r}; expected {len(TASKONOMY_FOLDERS)} relative paths "
                f"({', '.join(TASKONOMY_FOLDERS)})"
            )
            continue
        for folder, rel in zip(TASKONOMY_FOLDERS, entry, strict=True):
            problem = _path_problem(rel, folder)
            if problem:
                problems.append(f"{quoted(path)} {key}[{i}]: {problem}")
        entries.append(tuple(entry))
    raise_problems(problems)
    return entries


def check_files(root: Path, entries: list[tuple[str, ...]], key: str) -> tuple[int, int]:
    """The common (H, W) of a split, after checking every file's header (existence, mode, size)."""
    inside = root.resolve()
    missing: dict[str, list[str]] = {}
    problems: list[str] = []
    size: tuple[int, int] | None = None
    first = ""
    for entry in entries:
        for folder, rel in zip(TASKONOMY_FOLDERS, entry, strict=True):
            path = root / rel
            if not path.is_file():
                missing.setdefault(folder, []).append(str(path))
                continue
            if not path.resolve().is_relative_to(inside):
                problems.append(f"{quoted(path)} points outside the dataset root {quoted(root)} (a symbolic link?)")
                continue
            found = _probe(path, folder)
            if isinstance(found, str):
                problems.append(found)
            elif size is None:
                size, first = found, str(path)
            elif found != size:
                problems.append(
                    f"{quoted(path)} is {found[0]}x{found[1]} but {quoted(first)} is {size[0]}x{size[1]}; every "
                    "image of a split must have one size: resize beforehand with nearest neighbour (as AdaShare does)"
                )
    lost = [
        f"{len(paths)} of {len(entries)} {folder} files of {key!r} are missing (first {quoted(paths[0])}); "
        f"Taskonomy downloads come per modality: fetch {folder} too"
        for folder, paths in missing.items()
    ]
    raise_problems(lost + problems)
    assert size is not None
    return size

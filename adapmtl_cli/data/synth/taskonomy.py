"""Procedural Tiny-Taskonomy-like samples, written in the old per-building layout the ``taskonomy`` adapter reads.

Each sample is one scene of :func:`adapmtl_cli.data.synth.scenes.render_scene` (sample ``i`` of a split uses
``numpy.random.default_rng([seed, split, i])`` with split 0 = train, 1 = the ``test`` list (our val), 2 = the
``heldout`` list (our test), so it is the same room as the MTAN generator's sample ``i`` of that split, and any
prefix of a larger generation is identical to a smaller one), encoded as the Taskonomy files (see
``adapmtl_cli.data.taskonomy`` for the decoding):

- ``rgb``: uint8 RGB ``rint(image * 255)``.
- ``segment_semantic``: uint8 raw ids through :data:`RAW_CLASS_IDS` (0 where unlabelled). Room structure is
  background (1); the nine object classes take raw ids 2..10; raw 11..17 never occur.
- ``normal``: uint8 RGB ``rint((n + 1) * 127.5)`` of the camera-frame unit normal (OpenCV axes: x right, y down,
  z forward; real Taskonomy uses its own axes); grey 127 where there is none.
- ``depth_zbuffer``: uint16 ``rint(depth * 512)`` (1/512 m; z-depth), 65535 where invalid.
- ``keypoints2d``: uint16 ``rint(65536 * 150 * R)`` with ``R = max(0, det M - 0.04 trace² M)`` the Harris response
  of the grey image (BT.601 luma of the stored rgb, in [0, 1]); ``M`` holds Sobel gradient products (Sobel / 8,
  i.e. per-pixel differences) smoothed by a 5x5 binomial window. The loader's clip at 0.005 is reached at
  ``R = 3.3e-5``: about the strongest 0.1% of pixels at 256x256.
- ``edge_texture``: uint16 ``rint(65536 * |∇| / 0.75)`` with ``|∇|`` the Sobel / 8 gradient magnitude of the grey
  image; the loader's clip at 0.08 is reached at ``|∇| = 0.06``.

Both derived maps use fixed gains, so they depend on the image size (gradients per pixel shrink as images grow).
``semseg_prior_factor.npy`` holds ENet-style weights ``1 / ln(1.02 + p_c)`` from the decoded class frequencies
``p_c`` of the train split (uncertain counted as background), bounded by 1/ln 1.02 ≈ 50.5 for absent classes.
File names are ``<building>/<folder>/point_{p}_view_{v}_domain_{d}.png`` with made-up ``synth_*`` buildings
(the buildings of the three splits are disjoint), and ``taskonomy.json`` lists ``train``, ``test``, ``train1``
and ``train2`` (the first and second half of train), plus ``heldout`` (our test split,
:data:`~adapmtl_cli.data.layouts.HELDOUT_KEY`) when one is generated; without it every file is as before.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from adapmtl_cli.data.layouts import (
    HELDOUT_KEY,
    NYU13_CLASSES,
    TASKONOMY_CLASSES,
    TASKONOMY_DOMAINS,
    TASKONOMY_FOLDERS,
    TASKONOMY_JSON,
    TASKONOMY_PRIOR,
)
from adapmtl_cli.data.synth.scenes import render_scene
from adapmtl_cli.data.synth.writing import SceneSummary, check_generator_parameters, save_npy, write_error
from adapmtl_cli.errors import DataError
from adapmtl_cli.files.atomic import atomic_write

MANIFEST = "taskonomy_synth.json"
RAW_CLASS_IDS = {
    "ceiling": 1, "floor": 1, "wall": 1, "window": 1,
    "bed": 2, "books": 3, "chair": 4, "furniture": 5, "objects": 6,
    "picture": 7, "sofa": 8, "table": 9, "tv": 10,
}  # fmt: skip
"""Rendered class -> raw segment_semantic id (1 = background; decoded class = raw - 1). Unlabelled -> 0."""
TRAIN_BUILDINGS = ("ashgrove", "brackenfell", "cinderford", "dunwhistle", "elmbrook", "fernhollow")
TEST_BUILDINGS = ("glenmarsh", "hollowmere", "ivystone")
HELDOUT_BUILDINGS = ("juniperdale", "kestrelwick", "larchmont")
_BUILDINGS = (TRAIN_BUILDINGS, TEST_BUILDINGS, HELDOUT_BUILDINGS)
"""The buildings of split 0 (train), 1 (the ``test`` list, our val) and 2 (the ``heldout`` list, our test)."""
SAMPLES_PER_BUILDING = 64
KEYPOINT_GAIN = 150.0
EDGE_SCALE = 0.75
_FORMAT_VERSION = 1
_PREFIX = "synth_"
_LUMA = np.array([0.299, 0.587, 0.114])
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_RAW_OF = np.array([0] + [RAW_CLASS_IDS[name] for name in NYU13_CLASSES], dtype=np.uint8)  # index: NYU id + 1


def _sobel(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel x and y derivatives / 8 (per-pixel differences), edges replicated."""
    p = np.pad(grey, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx / 8.0, gy / 8.0


def _smooth(a: np.ndarray) -> np.ndarray:
    """Separable 5x5 binomial blur, edges replicated."""
    h, w = a.shape
    p = np.pad(a, 2, mode="edge")
    rows = sum(k * p[:, i : i + w] for i, k in enumerate(_BINOMIAL))
    return sum(k * rows[i : i + h] for i, k in enumerate(_BINOMIAL))


def grey(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma in [0, 1] (H, W) float64 of an (H, W, 3) uint8 image."""
    return (rgb.astype(np.float64) @ _LUMA) / 255.0


def keypoints2d(rgb: np.ndarray) -> np.ndarray:
    """The generator's keypoints2d file (H, W) uint16: the scaled positive Harris response of ``rgb``."""
    gx, gy = _sobel(grey(rgb))
    sxx, syy, sxy = _smooth(gx * gx), _smooth(gy * gy), _smooth(gx * gy)
    response = np.maximum(sxx * syy - sxy * sxy - 0.04 * (sxx + syy) ** 2, 0.0)
    return np.rint(np.clip(response * KEYPOINT_GAIN * 65536.0, 0, 65535)).astype(np.uint16)


def edge_texture(rgb: np.ndarray) -> np.ndarray:
    """The generator's edge_texture file (H, W) uint16: the scaled Sobel gradient magnitude of ``rgb``."""
    gx, gy = _sobel(grey(rgb))
    return np.rint(np.clip(np.hypot(gx, gy) / EDGE_SCALE * 65536.0, 0, 65535)).astype(np.uint16)


def encode_scene(scene: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The six Taskonomy files (folder -> uint8/uint16 array) of one ``render_scene`` result."""
    rgb = np.rint(np.clip(scene["image"], 0.0, 1.0) * 255.0).astype(np.uint8)
    label = np.rint(scene["label"]).astype(np.int64)
    depth = scene["depth"][..., 0].astype(np.float64)
    normal = scene["normal"].astype(np.float64)
    has_normal = (normal != 0).any(axis=-1, keepdims=True)
    return {
        "rgb": rgb,
        "segment_semantic": _RAW_OF[label + 1],
        "normal": np.where(has_normal, np.clip(np.rint((normal + 1.0) * 127.5), 0, 255), 127).astype(np.uint8),
        "depth_zbuffer": np.where(depth > 0, np.clip(np.rint(depth * 512.0), 1, 64499), 65535).astype(np.uint16),
        "keypoints2d": keypoints2d(rgb),
        "edge_texture": edge_texture(rgb),
    }


def class_weights(raw_pixels: np.ndarray) -> np.ndarray:
    """``1 / ln(1.02 + p_c)`` (17,) float64 from raw segment_semantic counts (18,), raw 0 counted as background."""
    counts = raw_pixels[1:].astype(np.float64)
    counts[0] += raw_pixels[0]
    freq = counts / max(counts.sum(), 1.0)
    return 1.0 / np.log(1.02 + freq)


def building_name(split_id: int, number: int) -> str:
    """The made-up building of the ``number``-th group of samples of a split (0 = train, 1 = test, 2 = heldout)."""
    names = _BUILDINGS[split_id]
    lap, which = divmod(number, len(names))
    return f"{_PREFIX}{names[which]}{lap + 1 if lap else ''}"


def sample_paths(split_id: int, index: int) -> list[str]:
    """The six root-relative paths of sample ``index`` of a split, in :data:`TASKONOMY_FOLDERS` order."""
    building, local = divmod(index, SAMPLES_PER_BUILDING)
    point, view = divmod(local, 2)
    name = building_name(split_id, building)
    return [f"{name}/{f}/point_{point}_view_{view}_domain_{TASKONOMY_DOMAINS[f]}.png" for f in TASKONOMY_FOLDERS]


def _save_png(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as PNG atomically (``files.atomic``), so a crash never leaves half a file behind."""

    def write(tmp: Path) -> None:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)

    atomic_write(path, write, error=write_error, parents=False)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), error=write_error, parents=False)


def _prepare_root(root: Path, overwrite: bool) -> None:
    """Create ``root``, or clear the files of an earlier generation (in any folder if ``overwrite``)."""
    if root.exists() and not root.is_dir():
        raise DataError(f"output {str(root)!r} is a file, not a folder; pass a folder path")
    if root.is_dir() and any(root.iterdir()) and not (root / MANIFEST).is_file() and not overwrite:
        raise DataError(
            f"output folder {str(root)!r} is not empty and holds no earlier synthetic Taskonomy data ({MANIFEST}); "
            "pass an empty or new folder, or overwrite=True"
        )
    root.mkdir(parents=True, exist_ok=True)
    for building in root.glob(f"{_PREFIX}*"):
        for folder in TASKONOMY_FOLDERS:
            sub = building / folder
            if sub.is_dir():
                for stale in [*sub.glob("point_*.png"), *sub.glob(".*.tmp")]:
                    stale.unlink()


def generate_taskonomy(
    root: Path,
    *,
    train: int = 256,
    val: int = 64,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    test: int = 0,
) -> SceneSummary:
    """Render ``train`` + ``val`` (+ ``test``) scenes into ``root`` as a Tiny-Taskonomy folder.

    ``val`` is the ``test`` list of ``taskonomy.json`` (as AdaShare names it); ``test`` > 0 adds the held-out
    ``heldout`` list, in buildings of its own.

    ``root/taskonomy_synth.json`` records the parameters and marks the folder as ours, so regenerating into it
    replaces the old samples. Any other non-empty folder is refused unless ``overwrite`` is set, and even then
    only ``synth_*/<folder>/point_*.png`` files are removed (``taskonomy.json`` and the prior are replaced).

    Args:
        on_progress: called with ``(done, total)`` after each sample.
        test: held-out test samples (0: no test split).

    Raises:
        ConfigError: a count, size or seed is out of range.
        DataError: ``root`` is a file, or a non-empty folder not made by this generator, or a file cannot be
            written (read-only folder, full disk).
    """
    check_generator_parameters(train, val, size, seed, test)
    root = Path(root)
    start = time.perf_counter()
    _prepare_root(root, overwrite)
    size = (int(size[0]), int(size[1]))
    params: dict[str, object] = {
        "format_version": _FORMAT_VERSION,
        "layout": "taskonomy",
        "train": train,
        "val": val,
        **({"test": test} if test else {}),
        "size": list(size),
        "seed": seed,
        "classes": list(TASKONOMY_CLASSES),
        "raw_class_ids": RAW_CLASS_IDS,
    }
    _write_text(root / MANIFEST, json.dumps({**params, "complete": False}, indent=2) + "\n")
    lists = (("train", train), ("test", val), (HELDOUT_KEY, test))
    index: dict[str, list[list[str]]] = {key: [] for key, count in lists if count}
    raw_pixels = np.zeros(len(TASKONOMY_CLASSES) + 1, dtype=np.int64)
    total, done = train + val + test, 0
    for split_id, (key, count) in enumerate(lists):
        for i in range(count):
            files = encode_scene(render_scene(np.random.default_rng([seed, split_id, i]), size))
            paths = sample_paths(split_id, i)
            for folder, rel in zip(TASKONOMY_FOLDERS, paths, strict=True):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                _save_png(root / rel, files[folder])
            if split_id == 0:
                raw_pixels += np.bincount(files["segment_semantic"].ravel(), minlength=len(raw_pixels))
            index[key].append(paths)
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    half = math.ceil(train / 2)
    heldout = {HELDOUT_KEY: index.pop(HELDOUT_KEY)} if test else {}
    index |= {"train1": index["train"][:half], "train2": index["train"][half:], **heldout}
    save_npy(root / TASKONOMY_PRIOR, class_weights(raw_pixels))
    _write_text(root / TASKONOMY_JSON, json.dumps(index) + "\n")
    _write_text(root / MANIFEST, json.dumps({**params, "complete": True}, indent=2) + "\n")
    return SceneSummary(
        root=root, train=train, val=val, size=size, seed=seed, seconds=time.perf_counter() - start, test=test
    )

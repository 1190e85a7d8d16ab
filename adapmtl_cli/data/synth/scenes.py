"""Procedural NYU-v2-like indoor scenes, written in the MTAN ``.npy`` layout or the AdaShare PNG/JSON layout.

Each scene is a room box (floor, ceiling, four walls) with furniture boxes standing on the floor and flat
patches (window, picture, tv, book shelf) on the walls, seen by a camera with the NYU Kinect intrinsics.
Every pixel is ray cast analytically, so depth, surface normal and class are consistent by construction:
depth is the z-distance in metres, normals are exact unit vectors in the camera frame (OpenCV axes: x right,
y down, z forward), classes follow the 13-class MTAN order. The image is rendered from the same geometry
(per-class albedo and texture, Lambert shading, fog, sensor noise), so every target is learnable from it.
Kinect-like invalid pixels (border, holes, shadows at depth edges, out of range) get depth 0, normal 0 and
label -1; label -1 also marks thin unlabelled strips at class boundaries, as in the real annotations.

Pure numpy and deterministic: sample ``i`` of a split comes from ``np.random.default_rng([seed, split, i])``
with split 0 = train, 1 = val, 2 = test, so any prefix of a larger generation is identical to a smaller one,
both layouts hold the same scenes, the three splits are disjoint draws, and adding a test split leaves the train
and val files byte for byte as they were.

The AdaShare layout (``layout="adashare"``, datasets.md §1b) stores the same scenes the way AdaShare, DiSparse
and AdapMTL ship NYU-v2: ``img/XXXX.png`` RGB uint8 (``round(255 * image)``), ``seg/XXXX.png`` 8-bit gray with
the NYU-40 id of each class (:data:`NYU13_TO_NYU40`) and 255 = unlabelled, ``normal_mask/XXXX.png`` RGB
``round((n + 1) / 2 * 255)`` with (255, 255, 255) = invalid, and ``depth/XXXX.npy`` float32 (H, W) metres,
*filled* (the true ray-cast depth everywhere, as in the real pack), plus ``nyu_v2_3task.json``. That index
keeps AdaShare's two lists (``train``; ``test``, which is our ``val``) and puts the optional held-out test split
under :data:`~adapmtl_cli.data.layouts.HELDOUT_KEY`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adapmtl_cli.data.layouts import (
    ADASHARE_FOLDERS,
    ADASHARE_JSON,
    HELDOUT_KEY,
    MTAN_FOLDERS,
    NYU13_CLASSES,
    NYU40_CLASSES,
    NYUV2_LAYOUTS,
)
from adapmtl_cli.data.synth.writing import SceneSummary, check_generator_parameters, save_npy, save_png, write_json
from adapmtl_cli.errors import DataError

NYU13_TO_NYU40 = {
    "bed": "bed", "books": "books", "ceiling": "ceiling", "chair": "chair", "floor": "floor",
    "furniture": "otherfurniture", "objects": "otherprop", "picture": "picture", "sofa": "sofa", "table": "table",
    "tv": "television", "wall": "wall", "window": "window",
}  # fmt: skip
"""The NYU-40 class the generator writes for each of its 13 classes in the AdaShare layout: the same name where
NYU-40 has it, ``tv`` -> ``television``, and the catch-all classes for the generic ``furniture`` and ``objects``."""

_SPLITS = ("train", "val", "test")
"""The generated splits; the position is the ``split`` part of each sample's seed."""
_MANIFEST = "synthetic.json"
_FORMAT_VERSION = 1

_KINECT = (518.857901, 519.469611, 325.582449, 253.736166)  # fx, fy, cx, cy at 480x640
_MIN_RANGE, _MAX_RANGE = 0.4, 10.0
_ID = {name: i for i, name in enumerate(NYU13_CLASSES)}
# 13-class id + 1 -> NYU-40 id as stored in seg PNGs (index 0 is the unlabelled -1).
_SEG_LUT = np.array([255] + [NYU40_CLASSES.index(NYU13_TO_NYU40[c]) for c in NYU13_CLASSES], dtype=np.uint8)

_Box = tuple[np.ndarray, np.ndarray, int]  # world-space min corner, max corner, class id
_Patch = tuple[int, int, tuple[float, float], tuple[float, float], int]  # axis, side, u range, y range, class id

# Box furniture: class -> (width x/z range, height range) in metres.
_FURNITURE = {
    "bed": ((1.4, 2.1), (0.4, 0.65)),
    "chair": ((0.4, 0.6), (0.8, 1.0)),
    "sofa": ((0.8, 2.2), (0.7, 0.9)),
    "table": ((0.6, 1.6), (0.65, 0.8)),
    "furniture": ((0.4, 1.2), (0.9, 2.0)),
    "objects": ((0.15, 0.45), (0.1, 0.5)),
}
# Wall patches: class -> (width range, (bottom, top) height range) in metres.
_PATCHES = {
    "window": ((1.0, 2.4), (0.8, 2.3)),
    "picture": ((0.5, 1.4), (1.1, 2.0)),
    "tv": ((0.8, 1.5), (0.8, 1.6)),
    "books": ((0.8, 1.6), (0.0, 1.9)),
}
_ALBEDO = np.array(
    [
        [0.80, 0.76, 0.70], [0.50, 0.35, 0.30], [0.92, 0.92, 0.90], [0.35, 0.25, 0.20], [0.55, 0.45, 0.35],
        [0.55, 0.38, 0.22], [0.70, 0.30, 0.25], [0.40, 0.55, 0.70], [0.30, 0.35, 0.60], [0.62, 0.47, 0.30],
        [0.06, 0.06, 0.08], [0.80, 0.78, 0.72], [0.85, 0.90, 1.00],
    ]
)  # fmt: skip


def kinect_intrinsics(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` of the NYU Kinect scaled to ``size = (H, W)``; pixel centres are integers."""
    h, w = size
    fx, fy, cx, cy = _KINECT
    sx, sy = w / 640.0, h / 480.0
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


def _camera(rng: np.random.Generator, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A camera position inside ``room`` and its rotation (columns: camera x, y, z axes in world frame)."""
    margin = 0.6
    pos = np.array(
        [rng.uniform(margin, room[0] - margin), rng.uniform(1.0, 1.6), rng.uniform(margin, room[2] - margin)]
    )
    # Look roughly toward the farthest corner, as people film rooms, rather than into the nearest wall.
    corners = np.array([[x, z] for x in (0.0, room[0]) for z in (0.0, room[2])]) - pos[[0, 2]]
    far = corners[np.argmax(np.linalg.norm(corners, axis=1))]
    yaw = np.arctan2(far[0], far[1]) + rng.uniform(-0.7, 0.7)
    pitch = rng.uniform(-0.45, 0.05)
    fwd = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return pos, np.stack([right, down, fwd], axis=1)


def _furniture(rng: np.random.Generator, room: np.ndarray, cam: np.ndarray, fwd: np.ndarray) -> list[_Box]:
    """2-6 axis-aligned boxes ``(lo, hi, class id)`` on the floor, mostly in view, never around the camera."""
    boxes: list[_Box] = []
    heading = np.arctan2(fwd[0], fwd[2])
    for _ in range(int(rng.integers(2, 7))):
        name = str(rng.choice(list(_FURNITURE)))
        (wmin, wmax), (hmin, hmax) = _FURNITURE[name]
        for _try in range(12):
            ext = rng.uniform(wmin, wmax, size=2) / 2
            angle, dist = heading + rng.uniform(-0.6, 0.6), rng.uniform(1.2, 5.0)
            cx, cz = cam[0] + dist * np.sin(angle), cam[2] + dist * np.cos(angle)
            lo = np.array([cx - ext[0], 0.0, cz - ext[1]])
            hi = np.array([cx + ext[0], rng.uniform(hmin, hmax), cz + ext[1]])
            inside = lo[0] > 0.05 and lo[2] > 0.05 and hi[0] < room[0] - 0.05 and hi[2] < room[2] - 0.05
            clear = not (lo[0] - 0.35 < cam[0] < hi[0] + 0.35 and lo[2] - 0.35 < cam[2] < hi[2] + 0.35)
            if inside and clear:
                boxes.append((lo, hi, _ID[name]))
                if name in ("table", "furniture") and rng.random() < 0.6:
                    top = rng.uniform(0.1, 0.3, size=3)
                    at = lo + rng.uniform(0.2, 0.8, size=3) * (hi - lo)
                    olo = np.array([at[0] - top[0] / 2, hi[1], at[2] - top[2] / 2])
                    boxes.append((olo, olo + top, _ID["objects"]))
                break
    return boxes


def _patches(rng: np.random.Generator, room: np.ndarray, fwd: np.ndarray) -> list[_Patch]:
    """2-6 wall rectangles ``(axis, side, (u0, u1), (y0, y1), class id)``; ``u`` runs along the wall."""
    patches: list[_Patch] = []
    for _ in range(int(rng.integers(2, 7))):
        name = str(rng.choice(list(_PATCHES)))
        (wmin, wmax), (ymin, ymax) = _PATCHES[name]
        axis = int(rng.choice([0, 2]))
        side = int((fwd[axis] > 0) == (rng.random() < 0.8))  # mostly on the walls the camera faces
        length = room[2 - axis]
        width = min(rng.uniform(wmin, wmax), length - 0.2)
        u0 = rng.uniform(0.1, length - width - 0.1)
        y0, y1 = ymin + rng.uniform(0.0, 0.2) * (ymin > 0), min(ymax - rng.uniform(0.0, 0.2), room[1] - 0.1)
        patches.append((axis, side, (u0, u0 + width), (y0, y1), _ID[name]))
    return patches


def _cast(
    origin: np.ndarray, dirs: np.ndarray, room: np.ndarray, boxes: list[_Box], patches: list[_Patch]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays ``dirs`` (3, N) from ``origin`` against the room and its furniture.

    Rays have camera z = 1, so the hit distance ``t`` is the z-depth. Returns ``t``, world unit normals
    (N, 3), class ids, and texture coordinates ``(2, N)`` in metres: the two world axes the hit surface spans,
    relative to the box corner for furniture.
    """
    o = origin[:, None]
    inv = 1.0 / np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
    exit_t = np.where(dirs > 0, room[:, None] - o, -o) * inv  # origin is inside the room box
    axis = np.argmin(exit_t, axis=0)
    cols = np.arange(dirs.shape[1])
    t = exit_t[axis, cols]
    point = o + t * dirs
    sign = np.sign(dirs[axis, cols])
    label = np.full(dirs.shape[1], _ID["wall"], dtype=np.int64)
    label[(axis == 1) & (sign < 0)] = _ID["floor"]
    label[(axis == 1) & (sign > 0)] = _ID["ceiling"]
    for wall_axis, side, (u0, u1), (y0, y1), cls in patches:
        u, y = point[2 - wall_axis], point[1]
        on = (axis == wall_axis) & ((sign > 0) == bool(side))
        label[on & (u >= u0) & (u <= u1) & (y >= y0) & (y <= y1)] = cls
    for lo, hi, cls in boxes:
        t1, t2 = (lo[:, None] - o) * inv, (hi[:, None] - o) * inv
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_in = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_out = np.minimum(np.minimum(far[0], far[1]), far[2])
        hit = np.flatnonzero((t_in <= t_out) & (t_in > 1e-6) & (t_in < t))
        if hit.size:
            t[hit], axis[hit], label[hit] = t_in[hit], np.argmax(near[:, hit], axis=0), cls
            point[:, hit] = o + t_in[hit] * dirs[:, hit] - lo[:, None]
    normal = np.zeros((dirs.shape[1], 3))
    normal[cols, axis] = -np.sign(dirs[axis, cols])
    uv = np.stack([np.where(axis == 0, point[2], point[0]), np.where(axis == 1, point[2], point[1])])
    return t, normal, label, uv


def _texture(rng: np.random.Generator, label: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-pixel albedo: a jittered colour per class times a class pattern (stripes, checker, noise)."""
    albedo = np.clip(_ALBEDO + rng.uniform(-0.08, 0.08, size=_ALBEDO.shape), 0.02, 1.0)
    colour = albedo[label]
    k = rng.uniform(0.0, 2 * np.pi, size=4)
    wave = (np.sin(7.1 * u + 3.3 * v + k[0]) + np.sin(-4.7 * u + 9.2 * v + k[1])) / 2
    fine = np.sin(61.0 * u + k[2]) * np.sin(57.0 * v + k[3])
    pattern = np.ones(len(label))

    def on(name: str) -> np.ndarray:
        return label == _ID[name]

    checker = (np.floor(u * 2.0) + np.floor(v * 2.0)) % 2
    pattern[on("floor")] = (0.8 + 0.3 * checker)[on("floor")]
    pattern[on("bed")] = (1.0 + 0.15 * np.sign(np.sin(12.0 * u)))[on("bed")]
    pattern[on("sofa")] = (0.9 + 0.2 * (fine > 0))[on("sofa")]
    pattern[on("chair")] = (0.85 + 0.3 * np.abs(fine))[on("chair")]
    grain = 0.85 + 0.15 * np.sin(40.0 * v + 3.0 * wave)
    for name in ("table", "furniture"):
        pattern[on(name)] = grain[on(name)]
    pattern[on("objects")] = (0.7 + 0.6 * np.abs(wave))[on("objects")]
    pattern[on("wall")] = (0.97 + 0.05 * wave)[on("wall")]
    pattern[on("ceiling")] = (0.98 + 0.02 * wave)[on("ceiling")]
    pattern[on("tv")] = (1.0 + 0.5 * (np.sin(90.0 * v) > 0.9))[on("tv")]
    colour = colour * pattern[:, None]
    books, picture, window = on("books"), on("picture"), on("window")
    if books.any():
        palette = rng.uniform(0.1, 0.9, size=(7, 3))
        spine = np.floor(u[books] * 25.0).astype(np.int64) % 7
        shelf = (v[books] * 3.0) % 1.0 < 0.12
        colour[books] = np.where(shelf[:, None], albedo[_ID["furniture"]], palette[spine])
    if picture.any():
        a, b = rng.uniform(0.1, 0.9, size=(2, 3))
        mix = (0.5 + 0.5 * wave[picture])[:, None]
        colour[picture] = a * mix + b * (1 - mix)
    if window.any():
        bar = ((u[window] * 2.5) % 1.0 < 0.08) | ((v[window] * 2.5) % 1.0 < 0.08)
        colour[window] = np.where(bar[:, None], 0.9 * albedo[_ID["wall"]], colour[window])
    return colour


def _shade(rng: np.random.Generator, colour: np.ndarray, normal: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Lambert shading from one or two directional lights plus ambient; windows glow instead."""
    light = np.full(len(normal), rng.uniform(0.25, 0.4))
    for _ in range(int(rng.integers(1, 3))):
        to_light = rng.normal(size=3) * np.array([1.0, 0.0, 1.0]) + np.array([0.0, rng.uniform(0.5, 2.0), 0.0])
        to_light /= np.linalg.norm(to_light)
        light += rng.uniform(0.4, 0.8) * np.clip(normal @ to_light, 0.0, None)
    light[label == _ID["window"]] = 1.05
    return colour * light[:, None]


def _invalid(rng: np.random.Generator, depth: np.ndarray) -> np.ndarray:
    """Kinect-like invalid pixels: border, elliptical holes, shadows left of near edges, out of range."""
    h, w = depth.shape
    bad = (depth < _MIN_RANGE) | (depth > _MAX_RANGE)
    top, bottom, left, right = rng.integers(1, max(2, round(0.03 * min(h, w))) + 1, size=4)
    bad[:top], bad[h - bottom :], bad[:, :left], bad[:, w - right :] = True, True, True, True
    rows, cols = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(0, 5))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ay, ax = rng.uniform(0.02, 0.08) * h, rng.uniform(0.02, 0.08) * w
        theta = rng.uniform(0, np.pi)
        dy, dx = rows - cy, cols - cx
        p, q = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
        bad |= (p / ax) ** 2 + (q / ay) ** 2 <= 1.0
    edge = depth[:, :-1] - depth[:, 1:] > 0.3  # the farther pixel left of a near edge lies in the IR shadow
    bad[:, :-1] |= edge
    bad[:, :-2] |= edge[:, 1:]
    return bad


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Render one random scene of ``size = (H, W)``.

    Returns:
        ``image`` (H, W, 3) float32 in [0, 1]; ``label`` (H, W) float32 class ids 0..12 or -1;
        ``depth`` (H, W, 1) float32 metres, 0 = invalid; ``normal`` (H, W, 3) float32 camera-frame unit
        vectors, 0 = invalid; ``depth_filled`` (H, W) float32 metres, the ray-cast depth of every pixel
        before the Kinect-like invalidation (what the AdaShare layout stores).
    """
    h, w = size
    room = np.array([rng.uniform(3.0, 8.0), rng.uniform(2.4, 3.0), rng.uniform(3.0, 8.0)])
    cam, rot = _camera(rng, room)
    boxes, patches = _furniture(rng, room, cam, rot[:, 2]), _patches(rng, room, rot[:, 2])
    fx, fy, cx, cy = kinect_intrinsics(size)
    rows, cols = np.mgrid[0:h, 0:w]
    rays = np.stack([(cols.ravel() - cx) / fx, (rows.ravel() - cy) / fy, np.ones(h * w)])
    t, normal_w, label, (u, v) = _cast(cam, rot @ rays, room, boxes, patches)
    colour = _shade(rng, _texture(rng, label, u, v), normal_w, label)
    fog = 1.0 - np.exp(-rng.uniform(0.01, 0.04) * t)[:, None]
    colour = colour * (1.0 - fog) + rng.uniform(0.5, 0.8) * fog
    colour = colour + rng.normal(0.0, rng.uniform(0.005, 0.02), size=colour.shape)
    depth = t.reshape(h, w)
    bad = _invalid(rng, depth)
    label = label.reshape(h, w)
    seam = np.zeros_like(bad)
    seam[:, :-1] |= label[:, :-1] != label[:, 1:]
    seam[:-1] |= label[:-1] != label[1:]
    unlabelled = bad | (seam & (rng.random(size=(h, w)) < rng.uniform(0.0, 0.7)))
    normal = (normal_w @ rot).reshape(h, w, 3)  # world -> camera frame
    normal[bad] = 0.0
    return {
        "image": np.clip(colour, 0.0, 1.0).reshape(h, w, 3).astype(np.float32),
        "label": np.where(unlabelled, -1, label).astype(np.float32),
        "depth": np.where(bad, 0.0, depth)[..., None].astype(np.float32),
        "normal": normal.astype(np.float32),
        "depth_filled": depth.astype(np.float32),
    }


def adashare_arrays(scene: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The four AdaShare-layout arrays of a rendered scene, keyed by folder (see the module docstring).

    ``img`` (H, W, 3) uint8 RGB; ``seg`` (H, W) uint8 NYU-40 ids, 255 = unlabelled; ``normal_mask`` (H, W, 3)
    uint8 RGB, (255, 255, 255) = invalid; ``depth`` (H, W) float32 filled metres.
    """
    normal = scene["normal"].astype(np.float64)
    encoded = np.clip(np.rint((normal + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8)
    encoded[~normal.any(axis=-1)] = 255
    return {
        "img": np.clip(np.rint(scene["image"].astype(np.float64) * 255.0), 0, 255).astype(np.uint8),
        "seg": _SEG_LUT[scene["label"].astype(np.int64) + 1],
        "normal_mask": encoded,
        "depth": scene["depth_filled"].astype(np.float32),
    }


def _write_manifest(root: Path, params: dict[str, object], complete: bool) -> None:
    write_json(root / _MANIFEST, {**params, "complete": complete})


def _prepare_root(root: Path, overwrite: bool, layout: str, splits: tuple[str, ...]) -> None:
    """Create ``root`` with ``layout``'s folders for ``splits``, after clearing the samples of an earlier generation.

    The files of *both* layouts and of every split are cleared, so a folder regenerated in the other layout is
    never detected as the old one, and one regenerated without a test split keeps no stale ``test/``. A folder
    holding anything else is refused unless ``overwrite`` is set.
    """
    if root.exists() and not root.is_dir():
        raise DataError(f"output {str(root)!r} is a file, not a folder; pass a folder path")
    if root.is_dir() and any(root.iterdir()) and not (root / _MANIFEST).is_file() and not overwrite:
        raise DataError(
            f"output folder {str(root)!r} is not empty and holds no earlier synthetic data ({_MANIFEST}); "
            "pass an empty or new folder, or overwrite=True"
        )
    mtan = [root / split / folder for split in _SPLITS for folder in MTAN_FOLDERS]
    adashare = [root / folder for folder in ADASHARE_FOLDERS]
    for sub in mtan + adashare:
        if sub.is_dir():
            suffix = "*.png" if sub.parent == root and sub.name != "depth" else "*.npy"
            for stale in [*sub.glob(suffix), *sub.glob(".*.tmp")]:
                stale.unlink()
    (root / ADASHARE_JSON).unlink(missing_ok=True)
    wanted = [root / split / folder for split in splits for folder in MTAN_FOLDERS] if layout == "mtan" else adashare
    for sub in adashare + mtan:
        if sub not in wanted and sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    for split in _SPLITS:
        if (root / split).is_dir() and not any((root / split).iterdir()):
            (root / split).rmdir()
    for sub in wanted:
        sub.mkdir(parents=True, exist_ok=True)


def generate_scenes(
    root: Path,
    *,
    train: int = 256,
    val: int = 64,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    layout: str = "mtan",
    test: int = 0,
) -> SceneSummary:
    """Render ``train`` + ``val`` (+ ``test``) scenes into ``root`` in the MTAN or the AdaShare layout.

    ``layout="mtan"`` writes ``root/{split}/{folder}/{i}.npy`` (13 classes), ``split`` in ``train``, ``val``
    and, when ``test`` > 0, ``test``. ``layout="adashare"`` writes the same scenes as
    ``root/{img,seg,normal_mask,depth}/XXXX.{png,npy}`` named ``0001``, ``0002``, ... (train first, then val,
    then test) and ``root/nyu_v2_3task.json`` with ``train``, ``test`` (= val, as AdaShare names it),
    ``train1``/``train2`` (the first and second half of train; train1 takes the odd one out) and, when ``test``
    > 0, ``heldout`` (our test split); the JSON is written last. With ``test=0`` every file is the same, byte for
    byte, as a generation without the option; with ``test`` > 0 the train and val files still are.

    ``root/synthetic.json`` records the parameters; it also marks the folder as ours, so regenerating into it
    replaces the old samples (a test split written earlier included). Any other non-empty folder is refused
    unless ``overwrite`` is set, and even then only the sample files of the two layouts
    (``{train,val,test}/{image,label,depth,normal}/*.npy``, ``{img,seg,normal_mask,depth}/*.{png,npy}``) and
    ``nyu_v2_3task.json`` are removed.

    Args:
        on_progress: called with ``(done, total)`` after each sample.
        layout: ``"mtan"`` or ``"adashare"``.
        test: held-out test samples (0: no test split).

    Raises:
        ConfigError: a count, size, seed or layout is out of range.
        DataError: ``root`` is a file, or a non-empty folder not made by this generator, or a file cannot be
            written (read-only folder, full disk).
    """
    check_generator_parameters(train, val, size, seed, test, layout=(layout, NYUV2_LAYOUTS))
    root = Path(root)
    start = time.perf_counter()
    counts = {"train": train, "val": val, "test": test}
    splits = tuple(split for split in _SPLITS if counts[split] > 0)
    _prepare_root(root, overwrite, layout, splits)
    size = (int(size[0]), int(size[1]))
    params: dict[str, object] = {
        "format_version": _FORMAT_VERSION,
        "layout": "mtan-npy" if layout == "mtan" else "adashare",
        "train": train,
        "val": val,
        **({"test": test} if test else {}),
        "size": list(size),
        "seed": seed,
        "classes": list(NYU13_CLASSES if layout == "mtan" else NYU40_CLASSES),
        **({"class_map": NYU13_TO_NYU40} if layout == "adashare" else {}),
        "intrinsics": dict(zip(("fx", "fy", "cx", "cy"), kinect_intrinsics(size), strict=True)),
    }
    _write_manifest(root, params, complete=False)
    total, done = train + val + test, 0
    keys = {"train": "train", "val": "test", "test": HELDOUT_KEY}  # our split -> its AdaShare JSON list
    entries: dict[str, list[list[str]]] = {keys[split]: [] for split in splits}
    for split in splits:
        split_id = _SPLITS.index(split)
        for i in range(counts[split]):
            scene = render_scene(np.random.default_rng([seed, split_id, i]), size)
            if layout == "mtan":
                for folder in MTAN_FOLDERS:
                    save_npy(root / split / folder / f"{i}.npy", scene[folder])
            else:
                entries[keys[split]].append(_save_adashare(root, done + 1, scene))
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    if layout == "adashare":
        half = (train + 1) // 2
        heldout = {HELDOUT_KEY: entries.pop(HELDOUT_KEY)} if test else {}
        entries |= {"train1": entries["train"][:half], "train2": entries["train"][half:], **heldout}
        write_json(root / ADASHARE_JSON, entries)
    _write_manifest(root, params, complete=True)
    return SceneSummary(root, train, val, size, seed, time.perf_counter() - start, test)


def _save_adashare(root: Path, number: int, scene: dict[str, np.ndarray]) -> list[str]:
    """Write sample ``number`` (1-based) in the AdaShare layout; return its JSON entry (root-relative paths)."""
    entry = []
    for folder, array in adashare_arrays(scene).items():
        relative = f"{folder}/{number:04d}.{'npy' if folder == 'depth' else 'png'}"
        (save_npy if folder == "depth" else save_png)(root / relative, array)
        entry.append(relative)
    return entry

"""The procedural NYU-like generator: determinism, target consistency with the geometry, files written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapmtl_cli.data.layouts import MTAN_FOLDERS, NYU13_CLASSES, NYU40_CLASSES
from adapmtl_cli.data.synth.scenes import (
    NYU13_TO_NYU40,
    SceneSummary,
    adashare_arrays,
    generate_scenes,
    kinect_intrinsics,
    render_scene,
)
from adapmtl_cli.errors import ConfigError, DataError

SIZE = (96, 128)
FLOOR, CEILING, WALL = (NYU13_CLASSES.index(c) for c in ("floor", "ceiling", "wall"))


@pytest.fixture(scope="module")
def scenes() -> list[dict[str, np.ndarray]]:
    return [render_scene(np.random.default_rng([0, 0, i]), SIZE) for i in range(32)]


def _points(depth: np.ndarray) -> np.ndarray:
    """Back-project a (H, W, 1) depth map to camera-frame points (H, W, 3)."""
    fx, fy, cx, cy = kinect_intrinsics(depth.shape[:2])
    rows, cols = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
    z = depth[..., 0].astype(np.float64)
    return np.stack([(cols - cx) / fx * z, (rows - cy) / fy * z, z], axis=-1)


def test_render_shapes_and_dtypes(scenes):
    h, w = SIZE
    expected = {"image": (h, w, 3), "label": (h, w), "depth": (h, w, 1), "normal": (h, w, 3), "depth_filled": (h, w)}
    for scene in scenes[:4]:
        assert {k: v.shape for k, v in scene.items()} == expected
        assert all(v.dtype == np.float32 for v in scene.values())


def test_same_seed_same_scene_and_different_seed_differs():
    a = render_scene(np.random.default_rng([7, 0, 3]), SIZE)
    b = render_scene(np.random.default_rng([7, 0, 3]), SIZE)
    c = render_scene(np.random.default_rng([8, 0, 3]), SIZE)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["depth"], c["depth"])


def test_value_ranges(scenes):
    for s in scenes:
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        label = s["label"]
        assert np.array_equal(label, np.rint(label))
        assert label.min() >= -1 and label.max() <= 12
        depth = s["depth"][..., 0]
        valid = depth > 0
        assert depth.min() == 0.0
        assert depth[valid].min() >= 0.4 and depth[valid].max() <= 10.0


def test_invalid_pixels_agree_across_targets(scenes):
    seams = 0
    for s in scenes:
        depth, normal, label = s["depth"][..., 0], s["normal"], s["label"]
        invalid = depth == 0
        length = np.linalg.norm(normal, axis=-1)
        np.testing.assert_allclose(length[~invalid], 1.0, atol=1e-5)
        assert np.all(normal[invalid] == 0)
        assert np.all(label[invalid] == -1)
        assert invalid[0].all() and invalid[-1].all() and invalid[:, 0].all() and invalid[:, -1].all()
        seams += int(np.count_nonzero((label == -1) & ~invalid))
    assert seams > 0  # unlabelled annotation seams also exist where depth is valid


def test_normals_face_the_camera(scenes):
    for s in scenes:
        points = _points(s["depth"])
        valid = s["depth"][..., 0] > 0
        assert np.all(np.einsum("ijk,ijk->ij", s["normal"], points)[valid] < 0)


def test_floor_is_one_plane_at_camera_height(scenes):
    for s in scenes:
        floor = s["label"] == FLOOR
        if floor.sum() < 20:
            continue
        normals = s["normal"][floor]
        np.testing.assert_allclose(normals, np.broadcast_to(normals[0], normals.shape), atol=1e-6)
        assert normals[0][1] < -0.8  # camera-frame up points toward image top (-y) under small pitch
        offset = _points(s["depth"])[floor] @ normals[0].astype(np.float64)
        np.testing.assert_allclose(offset, offset[0], atol=1e-3)
        assert 1.0 - 1e-3 <= -offset[0] <= 1.6 + 1e-3  # plane distance = camera height
        ceiling = s["label"] == CEILING
        if ceiling.any():
            np.testing.assert_allclose(
                s["normal"][ceiling], np.broadcast_to(-normals[0], (ceiling.sum(), 3)), atol=1e-6
            )
        walls = s["normal"][s["label"] == WALL]
        np.testing.assert_allclose(walls @ normals[0], 0.0, atol=1e-5)


def test_most_classes_appear(scenes):
    seen = set(np.unique(np.concatenate([s["label"].ravel() for s in scenes])).astype(int)) - {-1}
    assert len(seen) >= 10, sorted(seen)


def test_generate_writes_the_mtan_layout(tmp_path):
    calls = []
    summary = generate_scenes(
        tmp_path / "s", train=3, val=2, size=(24, 32), seed=5, on_progress=lambda *a: calls.append(a)
    )
    assert isinstance(summary, SceneSummary)
    assert (summary.root, summary.train, summary.val, summary.size, summary.seed) == (
        tmp_path / "s",
        3,
        2,
        (24, 32),
        5,
    )
    assert calls == [(k, 5) for k in range(1, 6)]
    shapes = {"image": (24, 32, 3), "label": (24, 32), "depth": (24, 32, 1), "normal": (24, 32, 3)}
    for split, count in (("train", 3), ("val", 2)):
        for folder in MTAN_FOLDERS:
            files = sorted(p.name for p in (tmp_path / "s" / split / folder).iterdir())
            assert files == sorted(f"{i}.npy" for i in range(count))
            array = np.load(tmp_path / "s" / split / folder / "0.npy", allow_pickle=False)
            assert array.shape == shapes[folder] and array.dtype == np.float32
    manifest = json.loads((tmp_path / "s" / "synthetic.json").read_text())
    assert manifest["complete"] is True
    assert (manifest["train"], manifest["val"], manifest["size"], manifest["seed"]) == (3, 2, [24, 32], 5)
    assert manifest["classes"] == list(NYU13_CLASSES)


def test_generation_is_prefix_stable_and_matches_render(tmp_path):
    generate_scenes(tmp_path / "small", train=2, val=1, size=(24, 32), seed=3)
    generate_scenes(tmp_path / "big", train=4, val=2, size=(24, 32), seed=3)
    for split, count in (("train", 2), ("val", 1)):
        for i in range(count):
            for folder in MTAN_FOLDERS:
                small = np.load(tmp_path / "small" / split / folder / f"{i}.npy")
                np.testing.assert_array_equal(small, np.load(tmp_path / "big" / split / folder / f"{i}.npy"))
    direct = render_scene(np.random.default_rng([3, 1, 0]), (24, 32))
    np.testing.assert_array_equal(direct["depth"], np.load(tmp_path / "small" / "val" / "depth" / "0.npy"))


def test_regenerating_replaces_earlier_output(tmp_path):
    generate_scenes(tmp_path, train=4, val=2, size=(16, 16))
    generate_scenes(tmp_path, train=2, val=1, size=(16, 16), seed=1)
    assert sorted(p.name for p in (tmp_path / "train" / "depth").iterdir()) == ["0.npy", "1.npy"]
    assert sorted(p.name for p in (tmp_path / "val" / "image").iterdir()) == ["0.npy"]


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"is not empty and holds no earlier synthetic data.*overwrite=True"):
        generate_scenes(tmp_path, train=1, val=1, size=(16, 16))
    generate_scenes(tmp_path, train=1, val=1, size=(16, 16), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "val" / "normal" / "0.npy").is_file()


def test_refuses_a_file_and_bad_parameters(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        generate_scenes(tmp_path / "f", train=1, val=1)
    with pytest.raises(ConfigError, match=r"train=0.*; size must be .* got \(4, 16\); seed must be"):
        generate_scenes(tmp_path / "g", train=0, val=1, size=(4, 16), seed=-1)
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_default_generation_is_fast(tmp_path: Path):
    start = time.perf_counter()
    summary = generate_scenes(tmp_path)
    assert (summary.train, summary.val, summary.size) == (256, 64, (96, 128))
    assert time.perf_counter() - start < 15.0


# --- the AdaShare layout -------------------------------------------------------------------------------------

# Gupta's 1-based NYU-40 ids, minus 1, of the generator's 13 classes (hand-copied from the NYU-40 list).
NYU40_ID = {
    "bed": 3, "books": 22, "ceiling": 21, "chair": 4, "floor": 1, "furniture": 38, "objects": 39,
    "picture": 10, "sofa": 5, "table": 6, "tv": 24, "wall": 0, "window": 8,
}  # fmt: skip


def test_nyu40_names_and_the_class_map():
    assert len(NYU40_CLASSES) == 40 and len(set(NYU40_CLASSES)) == 40
    assert (NYU40_CLASSES[0], NYU40_CLASSES[21], NYU40_CLASSES[24], NYU40_CLASSES[39]) == (
        "wall",
        "ceiling",
        "television",
        "otherprop",
    )
    assert {c: NYU40_CLASSES.index(NYU13_TO_NYU40[c]) for c in NYU13_CLASSES} == NYU40_ID


def test_filled_depth_is_the_depth_before_invalidation(scenes):
    for s in scenes[:8]:
        filled, depth = s["depth_filled"], s["depth"][..., 0]
        assert filled.dtype == np.float32 and filled.min() > 0
        valid = depth > 0
        np.testing.assert_array_equal(filled[valid], depth[valid])
        assert (~valid).any()


def test_adashare_encoding_by_hand():
    image = np.array([[[0.0, 0.5, 1.0], [0.2, 0.002, 0.998]]], np.float32)  # (1, 2, 3)
    scene = {
        "image": image,
        "label": np.array([[-1, NYU13_CLASSES.index("window")]], np.float32),
        "normal": np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]], np.float32),
        "depth_filled": np.array([[1.5, 7.25]], np.float32),
    }
    arrays = adashare_arrays(scene)
    assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
        "img": ((1, 2, 3), np.uint8),
        "seg": ((1, 2), np.uint8),
        "normal_mask": ((1, 2, 3), np.uint8),
        "depth": ((1, 2), np.float32),
    }
    # round(255 * x): 127.5 rounds half to even (128), 0.51 -> 1, 254.49 -> 254
    assert arrays["img"].tolist() == [[[0, 128, 255], [51, 1, 254]]]
    assert arrays["seg"].tolist() == [[255, 8]]
    # (n + 1) / 2 * 255: 1 -> 255, 0 -> 127.5 -> 128, -1 -> 0; the zero (invalid) normal -> white
    assert arrays["normal_mask"].tolist() == [[[255, 255, 255], [255, 128, 0]]]
    assert arrays["depth"].tolist() == [[1.5, 7.25]]


def test_generate_writes_the_adashare_layout(tmp_path):
    calls = []
    generate_scenes(
        tmp_path, train=5, val=2, size=(24, 32), seed=5, layout="adashare", on_progress=lambda *a: calls.append(a)
    )
    assert calls == [(k, 7) for k in range(1, 8)]
    index = json.loads((tmp_path / "nyu_v2_3task.json").read_text())
    entry = lambda n: [f"img/{n:04d}.png", f"seg/{n:04d}.png", f"normal_mask/{n:04d}.png", f"depth/{n:04d}.npy"]  # noqa: E731
    assert index == {
        "train": [entry(n) for n in range(1, 6)],
        "test": [entry(6), entry(7)],
        "train1": [entry(n) for n in range(1, 4)],
        "train2": [entry(4), entry(5)],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "depth", "img", "normal_mask", "nyu_v2_3task.json", "seg", "synthetic.json"
    ]  # fmt: skip
    for folder, mode in (("img", "RGB"), ("seg", "L"), ("normal_mask", "RGB")):
        with Image.open(tmp_path / folder / "0007.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", mode, (32, 24))
    depth = np.load(tmp_path / "depth" / "0007.npy")
    assert depth.shape == (24, 32) and depth.dtype == np.float32
    scene = render_scene(np.random.default_rng([5, 1, 1]), (24, 32))  # the second val scene
    np.testing.assert_array_equal(depth, scene["depth_filled"])
    with Image.open(tmp_path / "seg" / "0007.png") as im:
        np.testing.assert_array_equal(np.asarray(im), adashare_arrays(scene)["seg"])
    manifest = json.loads((tmp_path / "synthetic.json").read_text())
    assert (manifest["layout"], manifest["complete"], manifest["classes"]) == ("adashare", True, list(NYU40_CLASSES))
    assert manifest["class_map"] == NYU13_TO_NYU40


def test_switching_layouts_in_one_folder_leaves_no_trace_of_the_other(tmp_path):
    generate_scenes(tmp_path, train=2, val=1, size=(16, 16), layout="mtan")
    generate_scenes(tmp_path, train=2, val=1, size=(16, 16), layout="adashare")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "depth", "img", "normal_mask", "nyu_v2_3task.json", "seg", "synthetic.json"
    ]  # fmt: skip
    generate_scenes(tmp_path, train=1, val=1, size=(16, 16), layout="mtan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic.json", "train", "val"]


def test_overwrite_removes_only_adashare_sample_files(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty"):
        generate_scenes(tmp_path, train=1, val=1, size=(16, 16), layout="adashare")
    generate_scenes(tmp_path, train=2, val=1, size=(16, 16), layout="adashare", overwrite=True)
    generate_scenes(tmp_path, train=1, val=1, size=(16, 16), layout="adashare")
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["0001.png", "0002.png", "keep.txt"]
    assert sorted(p.name for p in (tmp_path / "depth").iterdir()) == ["0001.npy", "0002.npy"]


def test_unknown_layout_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"layout 'npy' must be one of: mtan, adashare"):
        generate_scenes(tmp_path / "x", train=1, val=1, layout="npy")
    assert not (tmp_path / "x").exists()

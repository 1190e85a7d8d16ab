"""The synthetic Tiny-Taskonomy generator: file layout, exact encodings, derived maps, prior, determinism, safety."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapmtl_cli.data.layouts import NYU13_CLASSES, TASKONOMY_FOLDERS
from adapmtl_cli.data.synth.scenes import SceneSummary
from adapmtl_cli.data.synth.taskonomy import (
    MANIFEST,
    class_weights,
    edge_texture,
    encode_scene,
    generate_taskonomy,
    grey,
    keypoints2d,
)
from adapmtl_cli.errors import ConfigError, DataError

NAME = re.compile(
    r"synth_[a-z]+\d*/(?P<folder>[a-z_0-9]+)/point_(?P<p>\d+)_view_(?P<v>[01])_domain_(?P<d>[a-z_0-9]+)\.png"
)


def _pixels(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel))


def test_layout_names_and_split_lists(tmp_path: Path) -> None:
    summary = generate_taskonomy(tmp_path, train=5, val=3, size=(16, 20), seed=2)
    assert isinstance(summary, SceneSummary)
    assert (summary.root, summary.train, summary.val, summary.size, summary.seed) == (tmp_path, 5, 3, (16, 20), 2)
    index = json.loads((tmp_path / "taskonomy.json").read_text())
    assert set(index) == {"train", "test", "train1", "train2"}
    assert (len(index["train"]), len(index["test"])) == (5, 3)
    assert index["train1"] + index["train2"] == index["train"] and len(index["train1"]) == 3
    for entry in index["train"] + index["test"]:
        assert len(entry) == 6
        for folder, rel in zip(TASKONOMY_FOLDERS, entry, strict=True):
            match = NAME.fullmatch(rel)
            assert match and match["folder"] == folder and (root_file := tmp_path / rel).is_file()
            assert match["d"] == ("segmentsemantic" if folder == "segment_semantic" else folder)
            assert Image.open(root_file).size == (20, 16)
    assert index["train"][0][0].endswith("/rgb/point_0_view_0_domain_rgb.png")
    assert index["train"][3][0].endswith("/rgb/point_1_view_1_domain_rgb.png")
    buildings = {split: {e[0].split("/")[0] for e in index[split]} for split in ("train", "test")}
    assert buildings["train"].isdisjoint(buildings["test"])
    modes = [Image.open(tmp_path / rel).mode for rel in index["test"][0]]
    assert modes == ["RGB", "L", "RGB", "I;16", "I;16", "I;16"]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["layout"] == "taskonomy" and manifest["size"] == [16, 20]


def test_encode_scene_by_hand() -> None:
    scene = {
        "image": np.array([[[0.0, 1.0, 0.5], [0.2, 0.4, 1.2]]], dtype=np.float32),
        "label": np.array([[-1.0, 0.0]], dtype=np.float32),  # unlabelled, bed
        "depth": np.array([[[0.0], [0.4]]], dtype=np.float32),
        "normal": np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]], dtype=np.float32),
    }
    files = encode_scene(scene)
    assert files["rgb"].tolist() == [[[0, 255, 128], [51, 102, 255]]]  # 127.5 rounds to even, 1.2 clips
    assert files["segment_semantic"].tolist() == [[0, 2]] and files["segment_semantic"].dtype == np.uint8
    assert files["depth_zbuffer"].tolist() == [[65535, 205]] and files["depth_zbuffer"].dtype == np.uint16
    assert files["normal"].tolist() == [[[127, 127, 127], [255, 128, 0]]]
    for name in ("ceiling", "floor", "wall", "window"):
        assert _raw_id(name) == 1
    assert sorted(_raw_id(n) for n in ("bed", "books", "chair", "furniture", "objects", "picture", "sofa")) == [
        2, 3, 4, 5, 6, 7, 8,
    ]  # fmt: skip


def _raw_id(name: str) -> int:
    label = np.array([[float(NYU13_CLASSES.index(name))]], dtype=np.float32)
    scene = {
        "image": np.zeros((1, 1, 3), np.float32),
        "label": label,
        "depth": np.ones((1, 1, 1), np.float32),
        "normal": np.array([[[0.0, 0.0, -1.0]]], np.float32),
    }
    return int(encode_scene(scene)["segment_semantic"][0, 0])


def test_edges_of_a_vertical_step() -> None:
    rgb = np.zeros((5, 8, 3), np.uint8)
    rgb[:, 4:] = 255
    assert grey(rgb)[0].tolist() == [0.0] * 4 + [pytest.approx(1.0)] * 4
    edges = edge_texture(rgb)
    # Sobel / 8 across the step is 4 / 8 = 0.5 in columns 3 and 4: rint(65536 * 0.5 / 0.75)
    assert edges.dtype == np.uint16 and edges[:, [3, 4]].tolist() == [[43691, 43691]] * 5
    assert not edges[:, [0, 1, 2, 5, 6, 7]].any()
    assert not keypoints2d(rgb).any()  # a straight edge is no corner: its Harris response is negative


def test_keypoints_peak_at_a_corner() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[8:, 8:] = 255
    keypoints = keypoints2d(rgb)
    assert keypoints.dtype == np.uint16 and keypoints.max() > 0
    peak = np.unravel_index(np.argmax(keypoints), keypoints.shape)
    assert abs(peak[0] - 7.5) <= 1.5 and abs(peak[1] - 7.5) <= 1.5
    assert not keypoints[:3].any() and not keypoints[:, :3].any()
    assert not keypoints2d(np.full((6, 6, 3), 90, np.uint8)).any() and not edge_texture(rgb[:4, :4]).any()


def test_class_weights_by_hand() -> None:
    raw = np.zeros(18, np.int64)
    raw[[0, 1, 2]] = [2, 6, 2]  # uncertain counts as background: p = 0.8, 0.2, then 0
    weights = class_weights(raw)
    assert weights.shape == (17,)
    assert weights[:2].tolist() == pytest.approx([1 / math.log(1.82), 1 / math.log(1.22)])
    assert weights[2:].tolist() == pytest.approx([1 / math.log(1.02)] * 15)


def test_prior_comes_from_the_train_labels(tmp_path: Path) -> None:
    generate_taskonomy(tmp_path, train=4, val=2, size=(16, 16), seed=3)
    index = json.loads((tmp_path / "taskonomy.json").read_text())
    raw = sum(np.bincount(_pixels(tmp_path, e[1]).ravel(), minlength=18) for e in index["train"])
    prior = np.load(tmp_path / "semseg_prior_factor.npy")
    assert prior.dtype == np.float64 and np.array_equal(prior, class_weights(raw))
    assert prior[0] < prior[1:].min()  # background is the most frequent class in every room


def test_same_seed_same_files_and_prefix_stability(tmp_path: Path) -> None:
    generate_taskonomy(tmp_path / "a", train=3, val=2, size=(12, 12), seed=9)
    generate_taskonomy(tmp_path / "b", train=2, val=1, size=(12, 12), seed=9)
    generate_taskonomy(tmp_path / "c", train=2, val=1, size=(12, 12), seed=10)
    index_a = json.loads((tmp_path / "a" / "taskonomy.json").read_text())
    index_b = json.loads((tmp_path / "b" / "taskonomy.json").read_text())
    assert index_a["train"][:2] == index_b["train"] and index_a["test"][:1] == index_b["test"]
    for rel in index_b["train"][1] + index_b["test"][0]:
        assert np.array_equal(_pixels(tmp_path / "a", rel), _pixels(tmp_path / "b", rel))
    rgb = index_b["train"][0][0]
    assert not np.array_equal(_pixels(tmp_path / "b", rgb), _pixels(tmp_path / "c", rgb))


def test_refuses_foreign_folders_and_replaces_its_own(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not empty and holds no earlier synthetic Taskonomy data"):
        generate_taskonomy(tmp_path, train=1, val=1, size=(8, 8))
    generate_taskonomy(tmp_path, train=3, val=1, size=(8, 8), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    stale = tmp_path / json.loads((tmp_path / "taskonomy.json").read_text())["train"][2][0]
    assert stale.is_file()
    generate_taskonomy(tmp_path, train=2, val=1, size=(8, 8))  # our own folder: no overwrite needed
    assert not stale.exists() and len(json.loads((tmp_path / "taskonomy.json").read_text())["train"]) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        generate_taskonomy(tmp_path / "file", train=1, val=1)


def test_bad_arguments_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        generate_taskonomy(tmp_path, train=0, val=1, size=(4, 4), seed=-1)
    message = str(info.value)
    assert "train=0" in message and "size must be" in message and "seed must be" in message
    assert not any(tmp_path.iterdir())


def test_progress_and_speed(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    start = time.perf_counter()
    generate_taskonomy(tmp_path, train=16, val=4, size=(64, 64), on_progress=lambda d, t: calls.append((d, t)))
    seconds = time.perf_counter() - start
    assert calls == [(i, 20) for i in range(1, 21)]
    assert seconds < 4.0  # about 0.2 s on one core (~100 scenes/s); generous for busy machines

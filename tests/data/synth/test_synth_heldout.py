"""``data synth --test N``: a held-out split in every layout, disjoint from train and val, which stay as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adapmtl_cli.data.layouts import ADASHARE_JSON, HELDOUT_KEY, MTAN_FOLDERS, TASKONOMY_JSON
from adapmtl_cli.data.synth.generate import generate
from adapmtl_cli.data.synth.scenes import render_scene
from adapmtl_cli.errors import ConfigError

LAYOUTS = ["nyuv2", "nyuv2-adashare", "taskonomy"]
SIZE = (16, 20)


def _run(layout: str, root: Path, test: int, train: int = 3, val: int = 2) -> None:
    generate(layout, root, train=train, val=val, test=test, size=SIZE, seed=4)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _index(layout: str, root: Path) -> dict[str, list[list[str]]]:
    return json.loads((root / (TASKONOMY_JSON if layout == "taskonomy" else ADASHARE_JSON)).read_text())


def _split_files(layout: str, root: Path, split: str) -> list[str]:
    """Every file of one of our splits (train, val, test), root-relative."""
    if layout == "nyuv2":
        return [str(p.relative_to(root)) for p in sorted((root / split).rglob("*.npy"))]
    key = {"train": "train", "val": "test", "test": HELDOUT_KEY}[split]
    return [rel for entry in _index(layout, root)[key] for rel in entry]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_without_test_every_file_is_as_before_and_with_it_train_and_val_are(tmp_path: Path, layout: str) -> None:
    _run(layout, tmp_path / "none", test=0)
    _run(layout, tmp_path / "zero", test=0)
    _run(layout, tmp_path / "with", test=2)
    none, zero, with_test = (_files(tmp_path / name) for name in ("none", "zero", "with"))
    assert none == zero  # --test 0 is today's generation, manifest and index included
    for split in ("train", "val"):
        rels = _split_files(layout, tmp_path / "none", split)
        assert rels == _split_files(layout, tmp_path / "with", split) and rels
        assert all(none[rel] == with_test[rel] for rel in rels), split
    if layout != "nyuv2":
        before, after = _index(layout, tmp_path / "none"), _index(layout, tmp_path / "with")
        assert list(after) == [*before, HELDOUT_KEY]  # the existing lists keep their order and content
        assert {k: after[k] for k in before} == before
    manifest = "taskonomy_synth.json" if layout == "taskonomy" else "synthetic.json"
    assert "test" not in json.loads(none[manifest]) and json.loads(with_test[manifest])["test"] == 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_test_split_is_written_and_disjoint(tmp_path: Path, layout: str) -> None:
    _run(layout, tmp_path, test=3)
    files = _files(tmp_path)
    splits = {split: _split_files(layout, tmp_path, split) for split in ("train", "val", "test")}
    per_sample = 4 if layout != "taskonomy" else 6
    assert {s: len(f) for s, f in splits.items()} == {
        "train": 3 * per_sample,
        "val": 2 * per_sample,
        "test": 3 * per_sample,
    }
    assert set(splits["test"]).isdisjoint(splits["train"] + splits["val"])
    images = {
        s: {files[rel] for rel in rels if rel.split("/")[-2] in ("image", "img", "rgb")} for s, rels in splits.items()
    }
    assert len(images["test"]) == 3 and images["test"].isdisjoint(images["train"] | images["val"])  # new scenes
    if layout == "taskonomy":
        buildings = {s: {rel.split("/")[0] for rel in rels} for s, rels in splits.items()}
        assert buildings["test"].isdisjoint(buildings["train"] | buildings["val"])


def test_sample_i_of_the_mtan_test_split_is_scene_seed_2_i(tmp_path: Path) -> None:
    _run("nyuv2", tmp_path, test=2)
    assert sorted(p.name for p in (tmp_path / "test" / "image").iterdir()) == ["0.npy", "1.npy"]
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == sorted(MTAN_FOLDERS)
    scene = render_scene(np.random.default_rng([4, 2, 1]), SIZE)
    for folder in MTAN_FOLDERS:
        np.testing.assert_array_equal(np.load(tmp_path / "test" / folder / "1.npy"), scene[folder])


def test_adashare_numbers_the_test_files_after_val(tmp_path: Path) -> None:
    _run("nyuv2-adashare", tmp_path, test=2)
    heldout = _index("nyuv2-adashare", tmp_path)[HELDOUT_KEY]
    assert [entry[0] for entry in heldout] == ["img/0006.png", "img/0007.png"]
    scene = render_scene(np.random.default_rng([4, 2, 0]), SIZE)
    np.testing.assert_array_equal(np.load(tmp_path / "depth" / "0006.npy"), scene["depth_filled"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_regenerating_without_a_test_split_drops_the_old_one(tmp_path: Path, layout: str) -> None:
    _run(layout, tmp_path / "a", test=2)
    _run(layout, tmp_path / "a", test=0)
    _run(layout, tmp_path / "b", test=0)
    if layout == "nyuv2":
        assert not (tmp_path / "a" / "test").exists()
    else:
        assert HELDOUT_KEY not in _index(layout, tmp_path / "a")
    # Only empty folders of the old held-out buildings may remain: no file tells the two folders apart.
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_a_negative_test_count_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the test sample count must be 0 \(no test split\) or more, got test=-1"):
        _run("nyuv2", tmp_path / "x", test=-1)
    assert not (tmp_path / "x").exists()

"""The MTAN ``.npy`` adapter: exact round trip of generated scenes and one clear error per bad layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from adapmtl_cli.data import DATASETS, DatasetAdapter, get_dataset
from adapmtl_cli.data.augment import AugmentedSplit, augment_sample
from adapmtl_cli.data.layouts import NYU13_CLASSES, detect_layout
from adapmtl_cli.data.nyuv2 import NpySplit, NyuV2, NyuV2Npy, describe
from adapmtl_cli.data.synth.scenes import generate_scenes
from adapmtl_cli.errors import DataError

H, W = 24, 32


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, train=6, val=3, size=(H, W), seed=11)
    return root


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy of the generated scenes, free to damage."""
    return Path(shutil.copytree(source, tmp_path / "scenes"))


def _open_error(root: Path, split: str = "train") -> str:
    with pytest.raises(DataError) as info:
        NyuV2Npy().open(root, split)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["nyuv2", "synthetic"])
def test_registered_under_both_names(name, source):
    adapter = get_dataset(name)
    assert name in DATASETS and adapter.name == name
    assert isinstance(adapter, DatasetAdapter)
    assert len(adapter.open(source, "train")) == 6


def test_tasks_follow_the_folders(root):
    tasks = NyuV2Npy().tasks(root)
    assert [(t.name, t.channels) for t in tasks] == [("segmentation", 13), ("depth", 1), ("normal", 3)]
    shutil.rmtree(root / "train" / "normal")
    assert [t.name for t in NyuV2Npy().tasks(root)] == ["segmentation", "depth"]


def test_round_trip_equals_the_written_arrays(source):
    for split, count in (("train", 6), ("val", 3)):
        data = NyuV2Npy().open(source, split)
        assert len(data) == count and data.size == (H, W)
        for i in range(count):
            image, targets = data[i]
            stored = {f: np.load(source / split / f / f"{i}.npy") for f in ("image", "label", "depth", "normal")}
            assert image.dtype == torch.float32 and image.shape == (3, H, W)
            assert torch.equal(image, torch.from_numpy(stored["image"]).permute(2, 0, 1))
            assert set(targets) == {"segmentation", "depth", "normal"}
            assert targets["segmentation"].dtype == torch.int64
            assert torch.equal(targets["segmentation"], torch.from_numpy(stored["label"]).long())
            assert torch.equal(targets["depth"], torch.from_numpy(stored["depth"]).permute(2, 0, 1))
            assert torch.equal(targets["normal"], torch.from_numpy(stored["normal"]).permute(2, 0, 1))
    image, _ = data[-1]
    assert torch.equal(image, data[2][0])
    with pytest.raises(IndexError):
        data[3]


def test_batches_through_a_dataloader(source):
    images, targets = next(iter(DataLoader(NyuV2Npy().open(source, "train"), batch_size=4)))
    assert images.shape == (4, 3, H, W)
    assert targets["segmentation"].shape == (4, H, W) and targets["depth"].shape == (4, 1, H, W)


def test_val_falls_back_to_test_folder(root):
    (root / "val").rename(root / "test")
    assert len(NyuV2Npy().open(root, "val")) == 3
    assert len(NyuV2Npy().open(root, "test")) == 3
    assert "unknown split 'dev'; use 'train', 'val' or 'test'" in _open_error(root, "dev")


def test_two_dimensional_depth_and_integer_labels_are_accepted(root):
    depth = np.load(root / "train" / "depth" / "0.npy")
    np.save(root / "train" / "depth" / "0.npy", depth[..., 0])
    label = np.load(root / "train" / "label" / "0.npy")
    np.save(root / "train" / "label" / "0.npy", label.astype(np.int16))
    image, targets = NyuV2Npy().open(root, "train")[0]
    assert torch.equal(targets["depth"], torch.from_numpy(depth).permute(2, 0, 1))
    assert torch.equal(targets["segmentation"], torch.from_numpy(label).long())


def test_missing_root(tmp_path):
    assert "dataset root" in _open_error(tmp_path / "nowhere") and "does not exist" in _open_error(tmp_path / "x")


def test_missing_split(root):
    shutil.rmtree(root / "val")
    assert f"split folder {str(root / 'val')!r} does not exist" in _open_error(root, "val")


def test_missing_image_folder(root):
    shutil.rmtree(root / "val" / "image")
    assert f"{str(root / 'val' / 'image')!r} does not exist" in _open_error(root, "val")


def test_missing_task_folder_in_one_split(root):
    shutil.rmtree(root / "val" / "normal")
    assert "lacks the normal/ folder" in _open_error(root, "val")


def test_count_mismatch(root):
    (root / "train" / "depth" / "5.npy").unlink()
    expected = (
        f"{str(root / 'train' / 'depth')!r} holds 5 files but {str(root / 'train' / 'image')!r} holds 6; "
        "every task folder needs one file per image"
    )
    assert _open_error(root) == expected


def test_gap_in_indices(root):
    for folder in ("image", "label", "depth", "normal"):
        (root / "train" / folder / "2.npy").rename(root / "train" / folder / "9.npy")
    message = _open_error(root)
    assert "holds 6 files but 2.npy is missing" in message and "0.npy..5.npy with no gaps" in message


def test_file_not_named_by_index(root):
    (root / "train" / "image" / "5.npy").rename(root / "train" / "image" / "five.npy")
    assert "five.npy' is not named by a sample index" in _open_error(root)


def test_empty_image_folder(root):
    for path in (root / "val" / "image").iterdir():
        path.unlink()
    assert "holds no .npy files" in _open_error(root, "val")


def test_wrong_shape(root):
    np.save(root / "train" / "normal" / "4.npy", np.zeros((H, W, 2), np.float32))
    message = _open_error(root)
    assert f"{str(root / 'train' / 'normal' / '4.npy')!r} has shape (24, 32, 2), expected (24, 32, 3)" in message


def test_mismatched_image_size(root):
    np.save(root / "train" / "image" / "3.npy", np.zeros((H + 2, W, 3), np.float32))
    assert "3.npy' has shape (26, 32, 3), expected (24, 32, 3)" in _open_error(root)


def test_first_image_must_be_rgb(root):
    np.save(root / "train" / "image" / "0.npy", np.zeros((H, W), np.float32))
    assert "has shape (24, 32); expected (H, W, 3) RGB" in _open_error(root)


def test_pickled_objects_are_refused(root):
    np.save(root / "train" / "label" / "1.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert "holds Python objects (dtype 'object'); unpickling is refused" in _open_error(root)


def test_garbage_and_truncated_files(root):
    (root / "train" / "depth" / "1.npy").write_bytes(b"not an array at all")
    assert "1.npy' is not a readable .npy file" in _open_error(root)
    data = (root / "val" / "image" / "0.npy").read_bytes()
    (root / "val" / "image" / "0.npy").write_bytes(data[: len(data) // 2])
    assert "0.npy' is truncated" in _open_error(root, "val")


def test_nan_in_image_names_the_file(root):
    image = np.load(root / "train" / "image" / "2.npy")
    image[3, 4, 1] = np.nan
    np.save(root / "train" / "image" / "2.npy", image)
    data = NyuV2Npy().open(root, "train")
    with pytest.raises(DataError, match=r"image/2\.npy' holds NaN or infinite values"):
        data[2]


def test_label_out_of_range(root):
    label = np.load(root / "train" / "label" / "0.npy")
    label[0, 0] = 255
    np.save(root / "train" / "label" / "0.npy", label)
    with pytest.raises(DataError, match=r"label/0\.npy' holds class id 255; NYU-13 labels are 0\.\.12"):
        NyuV2Npy().open(root, "train")[0]


def test_describe(source):
    info = describe(source)
    assert info["splits"] == {
        "train": {"folder": "train", "samples": 6, "size": [H, W]},
        "val": {"folder": "val", "samples": 3, "size": [H, W]},
    }
    assert info["tasks"] == ["segmentation", "depth", "normal"]
    assert info["sampled"] == {"split": "val", "samples": 3}
    pixels = info["class_pixels"]
    assert list(pixels) == ["ignore", *NYU13_CLASSES]
    assert sum(pixels.values()) == 3 * H * W and pixels["ignore"] > 0
    invalid = sum(int((np.load(source / "val" / "depth" / f"{i}.npy") == 0).sum()) for i in range(3))
    assert info["depth_invalid_ratio"] == pytest.approx(invalid / (3 * H * W))


def test_auto_layout_detects_mtan(root):
    adapter = get_dataset("nyuv2")
    assert isinstance(adapter, NyuV2) and detect_layout(root) == "mtan"
    assert adapter.describe(root)["layout"] == "mtan"
    assert [t.channels for t in adapter.tasks(root)] == [13, 1, 3]
    explicit = get_dataset("nyuv2", {"layout": "mtan"})
    assert isinstance(explicit, NyuV2Npy) and explicit.name == "nyuv2"
    shutil.rmtree(root / "val")
    shutil.rmtree(root / "train" / "image")  # an incomplete MTAN root still gets the MTAN checks
    assert detect_layout(root) == "mtan"
    with pytest.raises(DataError) as info:
        adapter.open(root, "train")
    assert f"{str(root / 'train' / 'image')!r} does not exist" in str(info.value)


@pytest.mark.parametrize("name", ["nyuv2", "synthetic"])
def test_augment_wraps_the_train_split_only(source, name):
    adapter = get_dataset(name, {"augment": "true"})
    assert adapter.name == name
    train, plain = adapter.open(source, "train"), NyuV2Npy().open(source, "train")
    assert isinstance(train, AugmentedSplit) and train.flip_normal_x
    assert isinstance(adapter.open(source, "val"), NpySplit)
    assert isinstance(get_dataset(name, {"augment": "false"}).open(source, "train"), NpySplit)
    train.set_epoch(2, seed=5)
    for i in range(len(train)):
        image, targets = train[i]
        expected = augment_sample(plain[i], train.kinds, train.draw(i, (H, W)))
        assert torch.equal(image, expected[0]) and all(torch.equal(targets[k], expected[1][k]) for k in targets)


def test_an_adashare_root_opened_as_mtan_says_so(tmp_path):
    generate_scenes(tmp_path, train=1, val=1, size=(16, 16), layout="adashare")
    for adapter in (get_dataset("synthetic"), get_dataset("nyuv2", {"layout": "mtan"})):
        with pytest.raises(DataError, match=r"\(it holds nyu_v2_3task.json, the AdaShare layout: use --data nyuv2 "):
            adapter.open(tmp_path, "train")


def _fractional(root: Path, split: str, index: int) -> Path:
    path = root / split / "label" / f"{index}.npy"
    label = np.load(path).astype(np.float32)
    label[3, 4] = 0.5
    np.save(path, label)
    return path


def test_fractional_labels_are_refused_not_rounded(root):
    path = _fractional(root, "train", 1)
    data = NyuV2Npy().open(root, "train")  # headers are fine: the values are checked when the sample is read
    assert data[0][1]["segmentation"].dtype == torch.int64
    with pytest.raises(DataError) as info:
        data[1]
    assert str(info.value).startswith(f"{str(path)!r} holds segmentation label 0.5 (1 such pixels), which is not")


def test_data_check_refuses_fractional_labels(root):
    _fractional(root, "val", 0)
    with pytest.raises(DataError, match=r"label/0\.npy' holds segmentation label 0\.5"):
        describe(root)

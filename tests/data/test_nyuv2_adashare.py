"""The AdaShare-layout adapter: exact round trip of generated scenes, decoding conventions, one error per defect."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from adapmtl_cli.data import DatasetAdapter, get_dataset
from adapmtl_cli.data.augment import AugmentedSplit
from adapmtl_cli.data.layouts import NYU13_CLASSES, NYU40_CLASSES
from adapmtl_cli.data.nyuv2 import NyuV2
from adapmtl_cli.data.nyuv2_adashare import AdaShareSplit, NyuV2AdaShare, decode_normals
from adapmtl_cli.data.synth.scenes import generate_scenes, render_scene
from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.jobs.prepare import components_manifest, prepare

H, W = 24, 32
SEED = 11
# 13-class id -> NYU-40 id (Gupta's 1-based id minus 1), hand-copied; index 13 stands for the -1 "unlabelled".
NYU40_OF_13 = np.array([3, 22, 21, 4, 1, 38, 39, 10, 5, 6, 24, 0, 8, -1])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adashare")
    generate_scenes(root, train=6, val=3, size=(H, W), seed=SEED, layout="adashare")
    return root


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy of the generated scenes, free to damage."""
    return Path(shutil.copytree(source, tmp_path / "scenes"))


def _open_error(root: Path, split: str = "train", **options: str) -> str:
    with pytest.raises(DataError) as info:
        get_dataset("nyuv2", options).open(root, split)
    message = str(info.value)
    assert "\n" not in message
    return message


def _index(root: Path) -> dict:
    return json.loads((root / "nyu_v2_3task.json").read_text())


def _write_index(root: Path, index: object) -> None:
    (root / "nyu_v2_3task.json").write_text(json.dumps(index))


def _scene(split: str, i: int) -> dict[str, np.ndarray]:
    return render_scene(np.random.default_rng([SEED, ("train", "val").index(split), i]), (H, W))


def _png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


# --- layout detection and options ------------------------------------------------------------------------------


def test_auto_detects_the_adashare_layout(source):
    adapter = get_dataset("nyuv2")
    assert isinstance(adapter, NyuV2) and isinstance(adapter, DatasetAdapter) and adapter.name == "nyuv2"
    assert [(t.name, t.channels) for t in adapter.tasks(source)] == [("segmentation", 40), ("depth", 1), ("normal", 3)]
    train, val = adapter.open(source, "train"), adapter.open(source, "val")
    assert isinstance(train, AdaShareSplit) and (len(train), len(val), train.size) == (6, 3, (H, W))
    assert adapter.describe(source)["layout"] == "adashare"


def test_explicit_layout_and_options(source):
    adapter = get_dataset("nyuv2", {"layout": "adashare", "normals": "adashare", "input": "rgb01"})
    assert isinstance(adapter, NyuV2AdaShare) and isinstance(adapter, DatasetAdapter)
    assert (adapter.name, adapter.normals, adapter.input_format) == ("nyuv2", "adashare", "rgb01")
    assert len(adapter.open(source, "val")) == 3
    with pytest.raises(DataError, match="holds no|does not exist"):
        get_dataset("nyuv2", {"layout": "mtan"}).open(source, "train")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"normals": "cv2"}, "--data nyuv2 option normals='cv2' must be one of: unit, adashare"),
        ({"input": "bgr"}, "--data nyuv2 option input='bgr' must be one of: caffe-bgr, rgb01"),
        ({"layout": "npy"}, "--data nyuv2 option layout='npy' must be one of: auto, mtan, adashare"),
        ({"augment": "maybe"}, "--data nyuv2 option augment='maybe' must be true or false"),
        (
            {"layout": "mtan", "input": "rgb01"},
            "--data nyuv2 option input='rgb01' applies to layout=adashare only, not layout=mtan; drop it",
        ),
    ],
)
def test_bad_options_are_config_errors(options, expected):
    with pytest.raises(ConfigError) as info:
        get_dataset("nyuv2", options)
    assert str(info.value) == expected


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"--data nyuv2 has no option 'crop' \(layout: .*; augment: .*; normals: "):
        get_dataset("nyuv2", {"crop": "321"})
    with pytest.raises(ConfigError, match=r"--data synthetic has no option 'layout' \(augment: "):
        get_dataset("synthetic", {"layout": "adashare"})


def test_adashare_options_on_an_mtan_root_are_config_errors(tmp_path):
    generate_scenes(tmp_path, train=1, val=1, size=(16, 16))
    adapter = get_dataset("nyuv2", {"normals": "adashare"})
    with pytest.raises(ConfigError) as info:
        adapter.tasks(tmp_path)
    assert str(info.value) == (
        f"--data nyuv2 option normals='adashare' applies to the AdaShare layout only, but {str(tmp_path)!r} is in "
        "the MTAN layout; drop it"
    )


def test_neither_layout(tmp_path):
    (tmp_path / "img").mkdir()
    message = _open_error(tmp_path)
    assert message.startswith(f"dataset root {str(tmp_path)!r} is in neither NYU-v2 layout (it has img/ but no ")
    assert (
        "the MTAN layout needs train/ and val/" in message and "the AdaShare layout needs nyu_v2_3task.json" in message
    )
    assert "does not exist" in _open_error(tmp_path / "nowhere")


def test_json_wins_over_split_folders(root):
    (root / "train" / "image").mkdir(parents=True)
    assert isinstance(get_dataset("nyuv2").open(root, "train"), AdaShareSplit)


# --- round trip ---------------------------------------------------------------------------------------------------


def _expected_normals(normal: np.ndarray) -> np.ndarray:
    """The generator's normals after 8-bit quantisation, decoded and renormalised by hand; (3, H, W)."""
    q = np.rint((normal.astype(np.float64) + 1) / 2 * 255)
    n = q / 255 * 2 - 1
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[~normal.any(axis=-1)] = 0
    return n.transpose(2, 0, 1)


def test_round_trip_is_what_the_generator_meant(source):
    adapter = get_dataset("nyuv2", {"input": "rgb01"})
    for split, count in (("train", 6), ("val", 3)):
        data = adapter.open(source, split)
        for i in range(count):
            scene = _scene(split, i)
            image, targets = data[i]
            q = np.rint(scene["image"].astype(np.float64) * 255).astype(np.uint8)
            assert image.dtype == torch.float32 and image.shape == (3, H, W)
            assert torch.equal(image, torch.from_numpy(q.transpose(2, 0, 1).astype(np.float32) / np.float32(255)))
            labels = NYU40_OF_13[scene["label"].astype(np.int64)]  # -1 indexes the trailing "unlabelled"
            assert targets["segmentation"].dtype == torch.int64
            assert np.array_equal(targets["segmentation"].numpy(), labels)
            assert torch.equal(targets["depth"], torch.from_numpy(scene["depth_filled"][None]))
            normal = targets["normal"].numpy()
            assert normal.dtype == np.float32
            np.testing.assert_allclose(normal, _expected_normals(scene["normal"]), rtol=0, atol=1e-6)
            assert np.array_equal(normal.any(axis=0), scene["normal"].any(axis=-1))


def test_caffe_bgr_input_by_default(source):
    image, _ = get_dataset("nyuv2").open(source, "val")[1]
    q = np.rint(_scene("val", 1)["image"].astype(np.float64) * 255).astype(np.float32)
    expected = np.stack(
        [q[..., 2] - np.float32(104.01), q[..., 1] - np.float32(116.67), q[..., 0] - np.float32(122.68)]
    )
    assert torch.equal(image, torch.from_numpy(expected))


def test_normal_decodings_by_hand():
    rgb = np.array([[[255, 255, 255], [127, 127, 127], [255, 128, 128], [3, 4, 0], [10, 255, 20]]], np.uint8)
    unit = decode_normals(rgb, "unit")[:, 0]
    assert unit.shape == (3, 5) and unit.dtype == np.float32
    assert unit[:, :2].tolist() == [[0, 0]] * 3  # invalid white, and the near-zero grey
    n = np.array([1.0, 1 / 255, 1 / 255])  # (255, 128, 128) / 255 * 2 - 1
    np.testing.assert_allclose(unit[:, 2], n / np.linalg.norm(n), atol=1e-7)
    assert np.linalg.norm(unit[:, 3]) == pytest.approx(1)
    np.testing.assert_allclose(unit[:, 4], np.array([-235, 255, -215]) / np.linalg.norm([-235, 255, -215]), atol=1e-7)
    ada = decode_normals(rgb, "adashare")[:, 0]
    # BGR colour triples, unit length; any channel at 255 is invalid
    assert ada[:, [0, 2, 4]].tolist() == [[0, 0, 0]] * 3
    np.testing.assert_allclose(ada[:, 1], np.full(3, 3**-0.5), atol=1e-7)
    np.testing.assert_allclose(ada[:, 3], [0.0, 0.8, 0.6], atol=1e-7)


def test_seg_ignore_and_nonpositive_depth(root):
    seg = np.full((H, W), 255, np.uint8)
    seg[0, :3] = [0, 39, 7]
    _png(seg, root / "seg" / "0001.png")
    depth = np.full((H, W), 2.5, np.float32)
    depth[1, :2] = [0.0, -1.0]
    np.save(root / "depth" / "0001.npy", depth)
    _, targets = get_dataset("nyuv2").open(root, "train")[0]
    assert targets["segmentation"][0, :4].tolist() == [0, 39, 7, -1]
    assert int((targets["segmentation"] == -1).sum()) == H * W - 3
    assert targets["depth"][0, 1, :3].tolist() == [0.0, 0.0, 2.5]


def test_batches_through_a_dataloader(source):
    images, targets = next(iter(DataLoader(get_dataset("nyuv2").open(source, "train"), batch_size=4)))
    assert images.shape == (4, 3, H, W) and targets["normal"].shape == (4, 3, H, W)
    assert targets["segmentation"].shape == (4, H, W) and targets["depth"].shape == (4, 1, H, W)


def test_augment_wraps_only_the_train_split(source):
    adapter = get_dataset("nyuv2", {"augment": "true", "normals": "adashare"})
    train = adapter.open(source, "train")
    assert isinstance(train, AugmentedSplit) and not train.flip_normal_x  # the original repos keep x on flips
    assert isinstance(adapter.open(source, "val"), AdaShareSplit)
    assert get_dataset("nyuv2", {"augment": "on"}).open(source, "train").flip_normal_x


# --- errors ---------------------------------------------------------------------------------------------------------


def test_json_problems(root):
    json_path = repr(str(root / "nyu_v2_3task.json"))
    (root / "nyu_v2_3task.json").write_text('{"train": [')
    assert _open_error(root).startswith(f"{json_path} is not valid JSON (line 1 column 12: ")
    _write_index(root, [1, 2])
    assert _open_error(root) == f"{json_path} holds a JSON list; expected an object of split lists"
    _write_index(root, {"train": []})
    assert _open_error(root) == (f"{json_path} key 'train' must be a non-empty list of [img, seg, normal_mask, depth]")
    assert _open_error(root, "val") == (
        f"{json_path} has no 'test' list (its keys: 'train'); the layout needs 'train' and 'test'"
    )
    assert _open_error(root, "dev") == "unknown split 'dev'; use 'train', 'val' or 'test'"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[" * 300_000 + b"]" * 300_000, "nests arrays or objects more than 64 levels deep"),
        (b'{"train": ' + b"[" * 70 + b"]" * 70 + b"}", "nests arrays or objects more than 64 levels deep"),
        (b'{"train": ["\xff"]}', "is not UTF-8 text (byte 12 is 0xff)"),
    ],
)
def test_an_index_that_is_not_plain_json_is_a_data_error(root, data: bytes, expected: str) -> None:
    (root / "nyu_v2_3task.json").write_bytes(data)
    assert _open_error(root) == f"{str(root / 'nyu_v2_3task.json')!r} {expected}; fix, re-copy or regenerate it"


def test_entries_that_are_not_four_paths(root):
    index = _index(root)
    index["train"][0] = index["train"][0][:3]
    index["train"][1][2] = 5
    _write_index(root, index)
    message = _open_error(root)
    assert 'nyu_v2_3task.json[\'train\'][0] is ["img/0001.png", "seg/0001.png", "normal_mask/0001.png"]; ' in message
    assert (
        "nyu_v2_3task.json['train'][1] is " in message and "expected 4 paths [img, seg, normal_mask, depth]" in message
    )


def test_paths_must_stay_inside_the_root(root, tmp_path):
    outside = tmp_path / "outside.png"
    shutil.copy(root / "img" / "0001.png", outside)
    os.symlink(outside, root / "img" / "link.png")
    index = _index(root)
    index["train"][0][0] = str(root / "img" / "0001.png")
    index["train"][1][1] = "seg/../../outside.png"
    index["train"][2][0] = "img/link.png"
    _write_index(root, index)
    message = _open_error(root)
    assert f"nyu_v2_3task.json['train'][0] path {str(root / 'img' / '0001.png')!r} is absolute or empty" in message
    assert "nyu_v2_3task.json['train'][1] path 'seg/../../outside.png' contains '..'" in message
    assert "nyu_v2_3task.json['train'][2] path 'img/link.png' resolves outside the dataset root" in message


def test_missing_files_are_each_named_and_capped_at_five(root):
    for n in range(1, 7):
        (root / "depth" / f"{n:04d}.npy").unlink()
    message = _open_error(root)
    assert message.startswith(f"{str(root / 'depth' / '0001.npy')!r} listed in nyu_v2_3task.json['train'][0] does not")
    assert message.count("does not exist") == 5 and message.endswith("; and 1 more")


def test_wrong_image_modes(root):
    _png(np.zeros((H, W, 3), np.uint8), root / "seg" / "0002.png")
    _png(np.zeros((H, W), np.uint8), root / "normal_mask" / "0003.png")
    message = _open_error(root)
    assert f"{str(root / 'seg' / '0002.png')!r} has image mode 'RGB'; expected 8-bit gray ('L') for seg" in message
    assert "0003.png' has image mode 'L'; expected RGB for normal_mask" in message


def test_depth_headers(root):
    np.save(root / "depth" / "0002.npy", np.zeros((H, W, 3), np.float32))
    np.save(root / "depth" / "0003.npy", np.zeros((H, W), np.uint16))
    np.save(root / "depth" / "0004.npy", np.ones((H, W + 1), np.float32))
    message = _open_error(root)
    assert f"{str(root / 'depth' / '0002.npy')!r} has shape (24, 32, 3); expected (H, W) depth in metres" in message
    assert "0003.npy' has dtype 'uint16'; expected float32 depth in metres" in message
    assert f"0004.npy' is 24x33 but {str(root / 'img' / '0004.png')!r} is 24x32" in message


def test_sizes_must_agree_across_the_split(root):
    n = "0005"
    _png(np.zeros((H, W + 8, 3), np.uint8), root / "img" / f"{n}.png")
    _png(np.zeros((H, W + 8), np.uint8), root / "seg" / f"{n}.png")
    _png(np.zeros((H, W + 8, 3), np.uint8), root / "normal_mask" / f"{n}.png")
    np.save(root / "depth" / f"{n}.npy", np.ones((H, W + 8), np.float32))
    assert _open_error(root) == f"{str(root / 'img' / '0005.png')!r} is 24x40, unlike the 24x32 of the first sample"


def test_unreadable_files(root):
    (root / "img" / "0002.png").write_bytes(b"not a png")
    assert _open_error(root).startswith(f"{str(root / 'img' / '0002.png')!r} is not a readable image (")
    (root / "img" / "0002.png").unlink()
    shutil.copy(root / "img" / "0001.png", root / "img" / "0002.png")
    (root / "depth" / "0003.npy").write_bytes(b"junk")
    assert "0003.npy' is not a readable .npy file" in _open_error(root)


def test_decoding_errors_name_the_file(root):
    seg = np.zeros((H, W), np.uint8)
    seg[4, 4] = 41
    _png(seg, root / "seg" / "0002.png")
    depth = np.ones((H, W), np.float32)
    depth[0, 0] = np.nan
    np.save(root / "depth" / "0003.npy", depth)
    data = get_dataset("nyuv2").open(root, "train")
    with pytest.raises(
        DataError, match=r"seg/0002\.png' holds class id 41; NYU-40 labels are 0\.\.39 with 255 = ignore"
    ):
        data[1]
    with pytest.raises(DataError, match=r"depth/0003\.npy' holds NaN or infinite values"):
        data[2]
    with pytest.raises(IndexError):
        data[6]


# --- describe and the pipeline ---------------------------------------------------------------------------------------


def test_describe(source):
    info = get_dataset("nyuv2").describe(source)
    assert info["splits"] == {
        "train": {"folder": "nyu_v2_3task.json:train", "samples": 6, "size": [H, W]},
        "val": {"folder": "nyu_v2_3task.json:test", "samples": 3, "size": [H, W]},
    }
    assert (info["layout"], info["tasks"], info["sampled"]) == (
        "adashare",
        ["segmentation", "depth", "normal"],
        {"split": "test", "samples": 3},
    )
    pixels = info["class_pixels"]
    assert list(pixels) == ["ignore", *NYU40_CLASSES]
    labels = np.concatenate([_scene("val", i)["label"].ravel() for i in range(3)]).astype(np.int64)
    assert pixels["ignore"] == int((labels == -1).sum()) > 0
    assert pixels["wall"] == int((labels == NYU13_CLASSES.index("wall")).sum())
    assert pixels["otherfurniture"] == int((labels == NYU13_CLASSES.index("furniture")).sum())
    assert sum(pixels.values()) == 3 * H * W and pixels["cabinet"] == 0
    assert info["depth_invalid_ratio"] == 0.0  # filled depth


def test_prepare_resolves_tasks_and_outputs_on_the_adashare_layout(tmp_path):
    data = tmp_path / "nyu"
    generate_scenes(data, train=8, val=4, size=(32, 40), seed=0, layout="adashare")
    factory = tmp_path / "nyu40_models.py"
    factory.write_text(
        "from adapmtl_cli.models import deeplab_resnet_tiny\n\n\n"
        "def build():\n"
        "    return deeplab_resnet_tiny(tasks={'segmentation': 40, 'depth': 1, 'normal': 3})\n"
    )
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    torch.save(_build_tiny40().state_dict(), checkpoint)
    prepared = prepare(
        str(checkpoint), factory=f"{factory}:build", trust_pickle=False, data="nyuv2", data_dir=str(data)
    )
    assert [(t.name, t.channels) for t in prepared.tasks] == [("segmentation", 40), ("depth", 1), ("normal", 3)]
    assert (len(prepared.train), len(prepared.val)) == (8, 4)
    manifest = components_manifest(prepared)
    assert manifest.output_mapping == "names"
    assert sorted(c.name for c in manifest.components) == [
        "backbone",
        "head:depth",
        "head:normal",
        "head:segmentation",
    ]


def _build_tiny40() -> torch.nn.Module:
    from adapmtl_cli.models import deeplab_resnet_tiny

    return deeplab_resnet_tiny(tasks={"segmentation": 40, "depth": 1, "normal": 3})


def test_an_mtan_root_opened_as_adashare_says_so(tmp_path):
    generate_scenes(tmp_path, train=1, val=1, size=(16, 16))
    message = _open_error(tmp_path, layout="adashare")
    assert message == (
        f"{str(tmp_path / 'nyu_v2_3task.json')!r} does not exist; the AdaShare layout lists its samples in it (the "
        "root holds train/ or val/: is it the MTAN layout? use layout=auto or mtan)"
    )

"""The Tiny-Taskonomy adapter: exact decoding of hand-written files, generated round trips, one error per bad layout,
and an end-to-end ``prepare`` with a five-head model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from adapmtl_cli.data import DATASETS, DatasetAdapter, get_dataset
from adapmtl_cli.data.layouts import NYU13_CLASSES, TASKONOMY_CLASSES
from adapmtl_cli.data.synth.scenes import render_scene
from adapmtl_cli.data.synth.taskonomy import RAW_CLASS_IDS, edge_texture, generate_taskonomy, keypoints2d
from adapmtl_cli.data.taskonomy import Taskonomy, TaskonomySplit
from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.jobs.prepare import prepare, select_tasks
from adapmtl_cli.tasks.dense_regression import WeightedSegmentation

H, W = 24, 32
SEED = 7
TASK_NAMES = ["segmentation", "normal", "depth", "keypoints", "edges"]
LOG_65536 = math.log(65536)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("taskonomy")
    generate_taskonomy(root, train=6, val=3, size=(H, W), seed=SEED)
    return root


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy of the generated folder, free to damage."""
    return Path(shutil.copytree(source, tmp_path / "taskonomy"))


def _index(root: Path) -> dict:
    return json.loads((root / "taskonomy.json").read_text())


def _write_index(root: Path, index: dict) -> None:
    (root / "taskonomy.json").write_text(json.dumps(index))


# --- hand-written files: every decoding rule, exactly ---------------------------------------------------

# One 1x5 sample. Pixel by pixel: the raw values and what they must decode to.
RGB = [[10, 20, 30], [255, 0, 127], [0, 0, 0], [1, 2, 3], [200, 100, 50]]
SEG = [0, 1, 2, 17, 9]
NORMAL = [[255, 127, 127], [127, 127, 127], [0, 127, 127], [127, 255, 127], [128, 128, 0]]
DEPTH = [0, 512, 64499, 64500, 65535]
KEYPOINTS = [0, 164, 328, 65535, 82]
EDGES = [0, 2621, 5243, 65535, 1311]


def _hand_root(tmp_path: Path) -> Path:
    root = tmp_path / "hand"
    arrays = {
        "rgb": np.array([RGB], dtype=np.uint8),
        "segment_semantic": np.array([SEG], dtype=np.uint8),
        "normal": np.array([NORMAL], dtype=np.uint8),
        "depth_zbuffer": np.array([DEPTH], dtype=np.uint16),
        "keypoints2d": np.array([KEYPOINTS], dtype=np.uint16),
        "edge_texture": np.array([EDGES], dtype=np.uint16),
    }
    entry = []
    for folder, array in arrays.items():
        path = root / "bldg" / folder / f"point_0_view_0_domain_{folder.replace('_semantic', 'semantic')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        entry.append(str(path.relative_to(root)))
    _write_index(root, {"train": [entry], "test": [entry]})
    np.save(root / "semseg_prior_factor.npy", np.arange(1.0, 18.0))
    return root


def test_hand_written_sample_decodes_exactly(tmp_path: Path) -> None:
    root = _hand_root(tmp_path)
    image, y = Taskonomy().open(root, "train")[0]
    assert image.shape == (3, 1, 5) and image.dtype == torch.float32
    # caffe-bgr: channel 0 is blue minus 104.01, channel 2 red minus 122.68
    assert image[:, 0, 0].tolist() == pytest.approx([30 - 104.01, 20 - 116.67, 10 - 122.68], abs=1e-4)
    assert image[:, 0, 1].tolist() == pytest.approx([127 - 104.01, 0 - 116.67, 255 - 122.68], abs=1e-4)
    assert y["segmentation"].dtype == torch.int64 and y["segmentation"].tolist() == [[0, 0, 1, 16, 8]]
    # raw 0 decodes to 0 = the depth kind's "invalid"; 64500 and up are invalid
    depth = [0.0, math.log(513) / LOG_65536, math.log(64500) / LOG_65536, 0.0, 0.0]
    assert y["depth"].shape == (1, 1, 5) and y["depth"][0, 0].tolist() == pytest.approx(depth, abs=1e-7)
    normal = y["normal"][:, 0].T.tolist()
    assert normal[0] == pytest.approx([1.0, -1 / 255, -1 / 255])  # valid
    assert normal[1] == [0.0, 0.0, 0.0]  # grey: shorter than 0.5
    assert normal[2] == pytest.approx([-1.0, -1 / 255, -1 / 255])  # valid: raw depth 64499
    assert normal[3] == [0.0, 0.0, 0.0]  # valid colour, but depth 64500 is invalid
    assert normal[4] == [0.0, 0.0, 0.0]  # depth 65535
    # keypoints: raw / 65536 clipped to [0, 0.005] -> [-1, 1]; edges: clipped to [0, 0.08]
    keypoints = [-1.0, 164 / 65536 / 0.005 * 2 - 1, 1.0, 1.0, 82 / 65536 / 0.005 * 2 - 1]
    edges = [-1.0, 2621 / 65536 / 0.08 * 2 - 1, 1.0, 1.0, 1311 / 65536 / 0.08 * 2 - 1]
    assert y["keypoints"][0, 0].tolist() == pytest.approx(keypoints, abs=1e-6)
    assert y["edges"][0, 0].tolist() == pytest.approx(edges, abs=1e-6)


def test_input_and_uncertain_options(tmp_path: Path) -> None:
    root = _hand_root(tmp_path)
    adapter = get_dataset("taskonomy", {"input": "rgb01", "uncertain": "ignore"})
    image, y = adapter.open(root, "val")[0]
    assert image[:, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert y["segmentation"].tolist() == [[-1, 0, 1, 16, 8]]
    task = adapter.tasks(root)[0]
    assert isinstance(task, WeightedSegmentation) and task.class_weights == tuple(np.arange(1.0, 18.0))


def test_options_are_checked() -> None:
    assert get_dataset("taskonomy", {"augment": "yes"}).augment is True
    with pytest.raises(ConfigError, match="--data taskonomy has no option 'layout'"):
        get_dataset("taskonomy", {"layout": "taskonomy"})
    with pytest.raises(ConfigError, match=r"option input='bgr' must be one of: caffe-bgr, rgb01"):
        get_dataset("taskonomy", {"input": "bgr"})
    with pytest.raises(ConfigError, match="option uncertain='drop' must be one of: background, ignore"):
        get_dataset("taskonomy", {"uncertain": "drop"})
    with pytest.raises(ConfigError, match="augment='maybe' must be true or false"):
        get_dataset("taskonomy", {"augment": "maybe"})


# --- generated folders: the loader returns what the generator meant -------------------------------------


def test_registered_with_five_tasks_in_order(source: Path) -> None:
    adapter = get_dataset("taskonomy")
    assert "taskonomy" in DATASETS and adapter.name == "taskonomy" and isinstance(adapter, DatasetAdapter)
    tasks = adapter.tasks(source)
    assert [(t.name, t.channels) for t in tasks] == list(zip(TASK_NAMES, [17, 3, 1, 1, 1], strict=True))
    assert tasks[0].class_weights == tuple(np.load(source / "semseg_prior_factor.npy").tolist())
    assert [t.name for t in select_tasks(tasks, ["keypoints2d", "sn", "segment_semantic", "edge"])] == [
        "keypoints",
        "normal",
        "segmentation",
        "edges",
    ]


def test_round_trip_equals_the_rendered_scenes(source: Path) -> None:
    to_class = np.array([-1] + [RAW_CLASS_IDS[name] - 1 for name in NYU13_CLASSES])  # NYU id + 1 -> class
    to_class[0] = 0  # unlabelled: raw 0, merged into background
    adapter = get_dataset("taskonomy", {"input": "rgb01"})
    for split_id, split, count in ((0, "train", 6), (1, "val", 3)):
        data = adapter.open(source, split)
        assert len(data) == count and data.size == (H, W)
        for i in range(count):
            scene = render_scene(np.random.default_rng([SEED, split_id, i]), (H, W))
            image, y = data[i]
            rgb = np.rint(scene["image"] * 255).astype(np.uint8)
            assert torch.equal(image, torch.from_numpy(rgb.astype(np.float32) / np.float32(255)).permute(2, 0, 1))
            label = np.rint(scene["label"]).astype(np.int64)
            assert np.array_equal(y["segmentation"].numpy(), to_class[label + 1])
            depth = scene["depth"][..., 0].astype(np.float64)
            expected = np.where(depth > 0, np.log1p(np.rint(depth * 512)) / LOG_65536, 0.0)
            assert np.allclose(y["depth"][0].numpy(), expected, atol=1e-7, rtol=0)
            normal = y["normal"].permute(1, 2, 0).numpy()
            assert np.array_equal((normal != 0).any(-1), depth > 0)
            assert np.abs(normal - scene["normal"]).max() <= 1 / 255 + 1e-6
            kp = np.clip(keypoints2d(rgb) / 65536, 0, 0.005) / 0.005 * 2 - 1
            edges = np.clip(edge_texture(rgb) / 65536, 0, 0.08) / 0.08 * 2 - 1
            assert np.allclose(y["keypoints"][0].numpy(), kp, atol=1e-6, rtol=0)
            assert np.allclose(y["edges"][0].numpy(), edges, atol=1e-6, rtol=0)
    assert (y["edges"] > -1).any() and (y["keypoints"] > -1).any()


def test_batches_through_a_dataloader(source: Path) -> None:
    images, y = next(iter(DataLoader(Taskonomy().open(source, "train"), batch_size=4)))
    assert images.shape == (4, 3, H, W)
    shapes = {k: tuple(v.shape) for k, v in y.items()}
    assert shapes == {
        "segmentation": (4, H, W),
        "normal": (4, 3, H, W),
        "depth": (4, 1, H, W),
        "keypoints": (4, 1, H, W),
        "edges": (4, 1, H, W),
    }


def test_select_reads_only_the_chosen_modalities(root: Path) -> None:
    full = Taskonomy().open(root, "train")
    subset = full.select(["sn", "keypoints2d"])
    assert isinstance(subset, TaskonomySplit) and subset.tasks == ("normal", "keypoints") and len(full.tasks) == 5
    before = full[1][1]
    for entry in _index(root)["train"]:  # segment_semantic and edge_texture vanish after opening
        (root / entry[1]).unlink()
        (root / entry[5]).unlink()
    image, y = subset[1]
    assert set(y) == {"normal", "keypoints"}
    assert torch.equal(y["normal"], before["normal"]) and torch.equal(y["keypoints"], before["keypoints"])
    with pytest.raises(DataError, match="segment_semantic"):
        full[1]
    with pytest.raises(ConfigError, match="Taskonomy has no task 'sky'"):
        full.select(["sky"])


def test_augment_flips_train_deterministically(source: Path) -> None:
    plain = Taskonomy().open(source, "train")
    data = Taskonomy(augment=True).open(source, "train")
    flips = 0
    for epoch in range(3):
        data.set_epoch(epoch, seed=5)
        for i in range(len(data)):
            flipped = np.random.default_rng([5, epoch, i]).random() < 0.5
            image, y = data[i]
            ref_image, ref = plain[i]
            if flipped:
                flips += 1
                ref_image = ref_image.flip(-1)
                ref = {k: v.flip(-1) for k, v in ref.items()}
                ref["normal"] = ref["normal"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
            assert torch.equal(image, ref_image)
            assert all(torch.equal(y[k], ref[k]) for k in TASK_NAMES)
            assert torch.equal(data[i][0], image)  # same (seed, epoch, index), same draw
    assert 0 < flips < 18
    val = Taskonomy(augment=True).open(source, "val")
    val.set_epoch(0, 5)
    assert all(torch.equal(val[i][0], Taskonomy().open(source, "val")[i][0]) for i in range(3))


def test_describe(source: Path) -> None:
    info = Taskonomy().describe(source)
    assert info["layout"] == "taskonomy" and info["root"] == str(source)
    assert info["splits"] == {
        "train": {"folder": "train", "samples": 6, "size": [H, W]},
        "val": {"folder": "test", "samples": 3, "size": [H, W]},
    }
    assert info["tasks"] == TASK_NAMES and info["sampled"] == {"split": "test", "samples": 3}
    entries = _index(source)["test"]
    seg = np.concatenate([np.asarray(Image.open(source / e[1])).ravel() for e in entries])
    depth = np.concatenate([np.asarray(Image.open(source / e[3])).ravel() for e in entries])
    counts = np.bincount(seg, minlength=18)
    assert list(info["class_pixels"]) == ["ignore", *TASKONOMY_CLASSES]
    assert info["class_pixels"]["ignore"] == 0 and info["uncertain_pixels"] == counts[0] > 0
    assert info["class_pixels"]["background"] == counts[0] + counts[1]
    assert [info["class_pixels"][c] for c in TASKONOMY_CLASSES[1:]] == counts[2:].tolist()
    assert info["depth_invalid_ratio"] == pytest.approx(np.mean(depth == 65535)) and info["depth_invalid_ratio"] > 0
    assert info["class_weights"] == np.load(source / "semseg_prior_factor.npy").tolist()
    ignore = Taskonomy(uncertain="ignore").describe(source)["class_pixels"]
    assert ignore["ignore"] == counts[0] and ignore["background"] == counts[1]


# --- values checked when a sample is read -------------------------------------------------------------


def test_bad_values_are_caught_when_read(root: Path) -> None:
    entry = _index(root)["train"][0]
    seg = np.asarray(Image.open(root / entry[1])).copy()
    seg[0, 0] = 18
    Image.fromarray(seg).save(root / entry[1])
    data = Taskonomy().open(root, "train")
    with pytest.raises(DataError, match="holds class id 18; Taskonomy segment_semantic is 0"):
        data[0]


# --- end to end: prepare() with a model whose outputs are keyed by the five task names ------------------


class FiveHeads(nn.Module):
    """A shared conv stem and one 1x1 head per Taskonomy task, returning ``{task: map}`` at half resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict(
            {name: nn.Conv2d(8, ch, 1) for name, ch in zip(TASK_NAMES, (17, 3, 1, 1, 1), strict=True)}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.stem(x / 128.0)
        return {name: head(features) for name, head in self.heads.items()}


def five_heads() -> nn.Module:
    torch.manual_seed(0)
    return FiveHeads()


def test_prepare_maps_five_tasks_and_every_loss_is_finite(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_taskonomy(data, train=8, val=4, size=(32, 32), seed=1)
    checkpoint = tmp_path / "model.pt"
    torch.save(five_heads().state_dict(), checkpoint)
    factory = f"{Path(__file__).resolve()}:five_heads"
    prepared = prepare(str(checkpoint), factory=factory, trust_pickle=False, data="taskonomy", data_dir=str(data))
    assert [t.name for t in prepared.tasks] == TASK_NAMES
    assert prepared.mapping.describe() == {name: name for name in TASK_NAMES} and prepared.mapping.how == "names"
    assert {c.name for c in prepared.cmap.components} == {"backbone", *(f"head:{n}" for n in TASK_NAMES)}
    x, y = next(iter(DataLoader(prepared.train, batch_size=4)))
    preds = prepared.mapping.select(prepared.loaded.model(x))
    losses = {t.name: t.loss(preds[t.name], y[t.name]) for t in prepared.tasks}
    assert all(math.isfinite(loss.item()) and loss.item() > 0 for loss in losses.values())

    subset = prepare(
        str(checkpoint), factory=factory, trust_pickle=False, data="taskonomy", data_dir=str(data),
        tasks=["segment_semantic", "edge_texture"],
    )  # fmt: skip
    assert [t.name for t in subset.tasks] == ["segmentation", "edges"]
    assert subset.input_shape == (3, 32, 32)

"""Every adapter opens the held-out ``test`` split where the folder has one, and says in one line where it looked
when it has none; ``data check`` lists it."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from adapmtl_cli.data import get_dataset
from adapmtl_cli.data.layouts import ADASHARE_JSON, TASKONOMY_JSON
from adapmtl_cli.data.nyuv2_adashare import decode_image
from adapmtl_cli.data.plugin import load_plugin
from adapmtl_cli.data.synth.generate import generate
from adapmtl_cli.data.synth.scenes import render_scene
from adapmtl_cli.data.taskonomy_decode import encode_input
from adapmtl_cli.errors import DataError

H, W = 16, 24
SEED = 3
# layout -> (--data, the folder data check names for each split)
LAYOUTS = {
    "nyuv2": ("nyuv2", {"train": "train", "val": "val", "test": "test"}),
    "nyuv2-adashare": ("nyuv2", {s: f"{ADASHARE_JSON}:{k}" for s, k in (("train", "train"), ("val", "test"))}),
    "taskonomy": ("taskonomy", {"train": "train", "val": "test"}),
}
HELDOUT_FOLDER = {"nyuv2": "test", "nyuv2-adashare": f"{ADASHARE_JSON}:heldout", "taskonomy": "heldout"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """Each layout generated with and without a 2-sample test split."""
    out = {}
    for layout in LAYOUTS:
        for test in (0, 2):
            root = tmp_path_factory.mktemp(f"{layout}-{test}")
            generate(layout, root, train=3, val=2, test=test, size=(H, W), seed=SEED)
            out[(layout, test)] = root
    return out


def _image(layout: str, scene: dict[str, np.ndarray]) -> torch.Tensor:
    """The network input each adapter makes of a rendered scene (default options)."""
    if layout == "nyuv2":
        return torch.from_numpy(scene["image"].transpose(2, 0, 1).copy())
    rgb = np.rint(np.clip(scene["image"].astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if layout == "nyuv2-adashare":
        return torch.from_numpy(decode_image(rgb, "caffe-bgr"))
    return torch.from_numpy(np.ascontiguousarray(encode_input(rgb, "caffe-bgr").transpose(2, 0, 1)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_open_test_reads_the_held_out_scenes(folders: dict[tuple[str, int], Path], layout: str) -> None:
    adapter = get_dataset(LAYOUTS[layout][0])
    root = folders[(layout, 2)]
    test, val = adapter.open(root, "test"), adapter.open(root, "val")
    assert (len(adapter.open(root, "train")), len(val), len(test)) == (3, 2, 2)
    for i in range(2):
        expected = _image(layout, render_scene(np.random.default_rng([SEED, 2, i]), (H, W)))
        assert torch.equal(test[i][0], expected)
        assert not torch.equal(val[i][0], expected)
    assert set(test[0][1]) == set(val[0][1])  # the same tasks


@pytest.mark.parametrize("layout", LAYOUTS)
def test_data_check_lists_the_test_split_only_where_there_is_one(
    folders: dict[tuple[str, int], Path], layout: str
) -> None:
    data, named = LAYOUTS[layout]
    without = get_dataset(data).describe(folders[(layout, 0)])["splits"]
    with_test = get_dataset(data).describe(folders[(layout, 2)])["splits"]
    assert {s: v["folder"] for s, v in without.items()} == {s: named[s] for s in ("train", "val")}
    assert {s: (v["folder"], v["samples"]) for s, v in with_test.items()} == {
        "train": (named["train"], 3),
        "val": (named["val"], 2),
        "test": (HELDOUT_FOLDER[layout], 2),
    }


@pytest.mark.parametrize(
    ("layout", "where"),
    [
        ("nyuv2", "split folder {root}/test' does not exist, so there is no held-out test split"),
        ("nyuv2-adashare", f"{{root}}/{ADASHARE_JSON}' has no 'heldout' list, so there is no held-out test split"),
        ("taskonomy", f"{{root}}/{TASKONOMY_JSON}' has no 'heldout' list (its keys: 'train', 'test', 'train1',"),
    ],
)
def test_open_test_without_one_is_a_one_line_error_naming_the_place(
    folders: dict[tuple[str, int], Path], layout: str, where: str
) -> None:
    root = folders[(layout, 0)]
    with pytest.raises(DataError) as info:
        get_dataset(LAYOUTS[layout][0]).open(root, "test")
    message = str(info.value)
    assert "\n" not in message
    assert where.format(root=f"'{root}") in message
    assert "--eval-split val" in message and "adapmtl data synth" in message


def test_mtan_val_still_falls_back_to_test_and_the_folder_is_listed_once(
    folders: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    root = Path(shutil.copytree(folders[("nyuv2", 0)], tmp_path / "scenes"))
    (root / "val").rename(root / "test")
    adapter = get_dataset("nyuv2")
    assert len(adapter.open(root, "val")) == len(adapter.open(root, "test")) == 2
    assert {s: v["folder"] for s, v in adapter.describe(root)["splits"].items()} == {"train": "train", "val": "test"}


def test_a_plugin_gets_the_test_split_asked_for(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """
        import torch

        TASKS = [{"kind": "regression", "name": "value"}]

        def dataset(root, split):
            if split == "test":
                raise FileNotFoundError(f"{root}/held_out.pt")
            return [(torch.zeros(2), {"value": torch.zeros(1)})] * (4 if split == "train" else 2)
        """
    )
    (tmp_path / "plugin.py").write_text(source)
    adapter = load_plugin(str(tmp_path / "plugin.py"), {})
    assert len(adapter.open(tmp_path, "val")) == 2
    with pytest.raises(DataError) as info:
        adapter.open(tmp_path, "test")
    assert "\n" not in str(info.value)
    assert f"dataset(root, 'test') raised FileNotFoundError: {tmp_path}/held_out.pt" in str(info.value)

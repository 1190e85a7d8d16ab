"""The checks of a Tiny-Taskonomy folder when a split is opened: its ``taskonomy.json``, image headers and prior,
one clear line per bad layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapmtl_cli.data.synth.taskonomy import generate_taskonomy
from adapmtl_cli.data.taskonomy import Taskonomy
from adapmtl_cli.errors import DataError

H, W = 24, 32


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("taskonomy")
    generate_taskonomy(root, train=6, val=3, size=(H, W), seed=7)
    return root


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy of the generated folder, free to damage."""
    return Path(shutil.copytree(source, tmp_path / "taskonomy"))


def _index(root: Path) -> dict:
    return json.loads((root / "taskonomy.json").read_text())


def _write_index(root: Path, index: dict) -> None:
    (root / "taskonomy.json").write_text(json.dumps(index))


def _open_error(root: Path, split: str = "train") -> str:
    with pytest.raises(DataError) as info:
        Taskonomy().open(root, split)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root_and_index(tmp_path: Path) -> None:
    assert "does not exist; pass the folder that holds taskonomy.json" in _open_error(tmp_path / "nope")
    assert "taskonomy.json' does not exist" in _open_error(tmp_path)
    (tmp_path / "taskonomy.json").write_text("{not json")
    assert "is not valid JSON" in _open_error(tmp_path)
    (tmp_path / "taskonomy.json").write_text("[]")
    assert "holds a JSON list; expected an object of split lists" in _open_error(tmp_path)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[" * 300_000 + b"]" * 300_000, "nests arrays or objects more than 64 levels deep"),
        (b'{"train": ["\xff"]}', "is not UTF-8 text (byte 12 is 0xff)"),
    ],
)
def test_an_index_that_is_not_plain_json_is_a_data_error(tmp_path: Path, data: bytes, expected: str) -> None:
    (tmp_path / "taskonomy.json").write_bytes(data)
    assert _open_error(tmp_path) == f"{str(tmp_path / 'taskonomy.json')!r} {expected}; rewrite it"


def test_split_keys(root: Path) -> None:
    index = _index(root)
    _write_index(root, {"train": index["train"]})
    assert "has no 'test' list (its keys: 'train'); add the val samples" in _open_error(root, "val")
    _write_index(root, {"train": index["train"], "val": index["test"]})
    assert len(Taskonomy().open(root, "val")) == 3  # a 'val' key is accepted when there is no 'test'
    assert "unknown split 'dev'" in _open_error(root, "dev")
    _write_index(root, {"train": []})
    assert "key 'train' must be a non-empty list of samples" in _open_error(root)


def test_malformed_entries_and_unsafe_paths(root: Path, tmp_path: Path) -> None:
    index = _index(root)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"")
    train = index["train"]
    train[0] = train[0][:5]
    train[1] = ["/abs/rgb.png", *train[1][1:]]
    train[2] = [train[2][0], "../up/segment_semantic/x.png", *train[2][2:]]
    train[3] = [train[3][2], train[3][1], train[3][0], *train[3][3:]]  # rgb and normal swapped
    _write_index(root, index)
    message = _open_error(root)
    assert "train[0] is" in message and "expected 6 relative paths (rgb, segment_semantic" in message
    assert "train[1]: its rgb path '/abs/rgb.png' is absolute" in message
    assert "train[2]: its segment_semantic path '../up/segment_semantic/x.png' contains '..'" in message
    assert "train[3]: its rgb path" in message and "names normal; entries list paths in the order" in message


def test_symlink_out_of_root(root: Path, tmp_path: Path) -> None:
    index = _index(root)
    real = root / index["train"][0][0]
    (tmp_path / "elsewhere.png").write_bytes(real.read_bytes())
    real.unlink()
    real.symlink_to(tmp_path / "elsewhere.png")
    assert "points outside the dataset root" in _open_error(root)


def test_missing_modality_is_one_grouped_problem(root: Path) -> None:
    for entry in _index(root)["train"]:
        (root / entry[4]).unlink()
    message = _open_error(root)
    assert message.startswith("6 of 6 keypoints2d files of 'train' are missing (first ")
    assert "fetch keypoints2d too" in message
    assert len(Taskonomy().open(root, "val")) == 3  # the other split is untouched


def test_wrong_modes_sizes_and_corrupt_files(root: Path) -> None:
    entries = _index(root)["train"]
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / entries[0][0])  # grey rgb
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / entries[0][3])  # 8-bit depth
    Image.fromarray(np.zeros((H, W + 1, 3), np.uint8)).save(root / entries[1][2])  # other size
    (root / entries[2][1]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / entries[3][2], format="JPEG")
    message = _open_error(root)
    assert f"{entries[0][0]}' is a mode-L image; rgb must be an 8-bit RGB image" in message
    assert f"{entries[0][3]}' is a mode-L image; depth_zbuffer must be a 16-bit grey PNG" in message
    assert f"{entries[1][2]}' is {H}x{W + 1} but" in message and "resize beforehand with nearest" in message
    assert f"{entries[2][1]}' is not a readable image" in message
    assert f"{entries[3][2]}' is a JPEG file; normal must be a (lossless) PNG" in message


def test_at_most_five_problems_are_listed(root: Path) -> None:
    for entry in _index(root)["train"]:
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / entry[0])
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / entry[2])
    message = _open_error(root)
    assert message.count("is a mode-L image") == 5 and message.endswith("and 7 more")


def test_prior_file_is_checked(root: Path) -> None:
    np.save(root / "semseg_prior_factor.npy", np.ones(13))
    with pytest.raises(DataError, match=r"holds \(13,\); expected 17 numeric class weights"):
        Taskonomy().tasks(root)
    np.save(root / "semseg_prior_factor.npy", -np.ones(17))
    with pytest.raises(DataError, match="negative, NaN or all-zero weights"):
        Taskonomy().tasks(root)
    (root / "semseg_prior_factor.npy").unlink()
    with pytest.raises(DataError, match="semseg_prior_factor.npy' does not exist"):
        Taskonomy().tasks(root)

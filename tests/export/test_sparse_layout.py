"""Sparse file tables and layout: versions 1 and 2 stay readable, version 3 packs one blob, bad tables fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_samples import assert_bit_equal, sparse_weights, valid_parts, with_table, write_raw
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.sparse_codec import decode_sparse, encode_sparse, load_sparse, save_sparse
from adapmtl_cli.export.sparse_layout import BLOB_KEY, pack_v3
from adapmtl_cli.export.sparse_tensor import cast_state

# --- versions 1 and 2: one entry per part ---------------------------------------------------------


def test_version_1_and_2_files_stay_readable(tmp_path: Path) -> None:
    state = {"w": sparse_weights((40, 30), 0.9, torch.float32), "b": torch.rand(5)}
    for values_dtype, version in ((None, "1"), (torch.float16, "2")):
        tensors, metadata = encode_sparse(state, values_dtype=values_dtype)
        assert metadata["version"] == version
        loaded = load_sparse(write_raw(tmp_path / f"v{version}.safetensors", tensors, metadata))
        for name, tensor in cast_state(state, values_dtype).items():
            assert_bit_equal(loaded[name], tensor)


@pytest.mark.parametrize(
    ("version", "values_dtype", "message"),
    [
        (
            "1",
            "float16",
            "must have exactly 'encoding', 'shape' and 'dtype'; the file is corrupt",
        ),
        ("2", "float64", "values_dtype 'float64' does not narrow dtype 'float32'"),
        ("2", "int8", "values_dtype 'int8' does not narrow"),
    ],
)
def test_rejects_bad_values_dtype(tmp_path: Path, version: str, values_dtype: str, message: str) -> None:
    tensors, metadata = encode_sparse({"w": sparse_weights((64, 64), 0.9, torch.float32)}, values_dtype=torch.float16)
    path = write_raw(
        tmp_path / "d.safetensors", tensors, {**with_table(metadata, values_dtype=values_dtype), "version": version}
    )
    with pytest.raises(ExportError, match=message):
        load_sparse(path)


def test_rejects_values_stored_wider_than_declared(tmp_path: Path) -> None:
    tensors, metadata = encode_sparse({"w": sparse_weights((64, 64), 0.9, torch.float32)}, values_dtype=torch.float16)
    tensors["w::values"] = tensors["w::values"].float()
    with pytest.raises(ExportError, match=r"values are \[\d+\] torch.float32, expected one dimension of torch.float16"):
        load_sparse(write_raw(tmp_path / "x.safetensors", tensors, metadata))


def test_rejects_unknown_version(tmp_path: Path) -> None:
    tensors, metadata = valid_parts()
    path = write_raw(tmp_path / "v.safetensors", tensors, {**metadata, "version": "4"})
    with pytest.raises(ExportError, match=r"unknown sparse format version .4."):
        load_sparse(path)


def test_rejects_plain_safetensors(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "p.safetensors", {"w": torch.zeros(3)}, {})
    with pytest.raises(ExportError, match="not an adapmtl sparse file"):
        load_sparse(path)


def test_rejects_missing_key(tmp_path: Path) -> None:
    tensors, metadata = valid_parts()
    del tensors["w::mask"]
    with pytest.raises(ExportError, match=r"missing \['w::mask'\]"):
        load_sparse(write_raw(tmp_path / "k.safetensors", tensors, metadata))


def test_rejects_mask_of_wrong_length(tmp_path: Path) -> None:
    tensors, metadata = valid_parts()
    tensors["w::mask"] = tensors["w::mask"][:-1].clone()
    with pytest.raises(ExportError, match="mask is"):
        load_sparse(write_raw(tmp_path / "m.safetensors", tensors, metadata))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding": "rle"}, "unknown encoding 'rle'"),
        ({"dtype": "complex64"}, "unknown dtype 'complex64'"),
        ({"shape": [64, -64]}, "not a list of non-negative integers"),
        ({"shape": [64, 64.0]}, "not a list of non-negative integers"),
    ],
)
def test_rejects_bad_entries(tmp_path: Path, change: dict[str, object], message: str) -> None:
    tensors, metadata = valid_parts()
    path = write_raw(tmp_path / "e.safetensors", tensors, with_table(metadata, **change))
    with pytest.raises(ExportError, match=message):
        load_sparse(path)


# --- version 3: one blob, compact table -----------------------------------------------------------


def test_file_is_ordinary_safetensors_with_string_metadata(tmp_path: Path) -> None:
    bias = torch.rand(7)
    save_sparse({"w": sparse_weights((100, 100), 0.99, torch.float32), "b": bias}, tmp_path / "w.safetensors")
    raw = load_file(str(tmp_path / "w.safetensors"))
    assert set(raw) == {BLOB_KEY, "b"}  # dense tensors stay readable as they are; sparse payloads share one blob
    assert raw[BLOB_KEY].dtype == torch.uint8
    assert torch.equal(raw["b"], bias)
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["version"] == "3"
    table = json.loads(metadata["tensors"])
    count = table["w"][4]
    assert table == {"w": ["indices", "float32", [100, 100], 0, count], "b": []}
    assert raw[BLOB_KEY].numel() == count * (4 + 4)  # fp32 values then int32 indices


def _v3_parts(values_dtype: torch.dtype | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    state = {
        "w": sparse_weights((64, 64), 0.9, torch.float32),  # bitmask
        "b": torch.rand(5),  # dense
        "v": sparse_weights((50, 50), 0.99, torch.float32, seed=1),  # indices
    }
    return pack_v3(*encode_sparse(state, values_dtype=values_dtype))


def _with_v3_entry(metadata: dict[str, str], name: str, entry: object) -> dict[str, str]:
    table = json.loads(metadata["tensors"])
    table[name] = entry
    return {**metadata, "tensors": json.dumps(table)}


def test_v3_packs_every_sparse_payload_into_one_aligned_blob() -> None:
    tensors, metadata = _v3_parts()
    table = json.loads(metadata["tensors"])
    assert table["b"] == [] and table["w"][0] == "bitmask" and table["v"][0] == "indices"
    w_offset, w_count = table["w"][3:]
    v_offset, v_count = table["v"][3:]
    assert w_offset == 0 and v_offset % 8 == 0
    # w: values then its 512-byte mask; v: values then (4-aligned) int32 indices, which end the blob.
    assert v_offset >= w_count * 4 + 64 * 64 // 8
    assert tensors[BLOB_KEY].numel() == v_offset + v_count * 8
    decoded = decode_sparse(tensors, metadata)
    assert torch.equal(decoded["v"], sparse_weights((50, 50), 0.99, torch.float32, seed=1))


def test_v3_narrow_values_round_trip(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts(torch.bfloat16)
    assert metadata["values_dtype"] == "bfloat16"
    assert json.loads(metadata["tensors"])["b"] == ["dense", "float32"]
    decoded = load_sparse(write_raw(tmp_path / "n.safetensors", tensors, metadata))
    assert decoded["b"].dtype == torch.float32 and decoded["w"].dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "entry", "message"),
    [
        ("v", "x", "is not a list"),
        ("v", ["indices", "float32", [50, 50], 4], "must be"),
        ("v", ["indices", "float32", [50, 50], 3, 25], "misaligned"),
        ("v", ["indices", "float32", [50, 50], 0, 25], "overlap"),
        ("v", ["indices", "float32", [50, 50], 10**6, 25], "run past"),
        ("v", ["indices", "float32", [50, 50], -8, 25], "overlap"),
        ("w", ["bitmask", "float32", [2, 2], 0, 9], "9 values for a tensor of 4"),
        ("b", ["dense", "float64"], "values_dtype"),
        ("gone", [], "needs a stored tensor"),
        ("w", ["rle", "float32", [64, 64], 0, 5], "must be"),
    ],
)
def test_v3_rejects_bad_table_entries(tmp_path: Path, name: str, entry: object, message: str) -> None:
    tensors, metadata = _v3_parts()
    path = write_raw(tmp_path / "t.safetensors", tensors, _with_v3_entry(metadata, name, entry))
    with pytest.raises(ExportError, match=message):
        load_sparse(path)


def test_v3_rejects_a_blob_longer_than_its_table(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts()
    tensors[BLOB_KEY] = torch.cat([tensors[BLOB_KEY], torch.zeros(8, dtype=torch.uint8)])
    with pytest.raises(ExportError, match="table accounts for"):
        load_sparse(write_raw(tmp_path / "l.safetensors", tensors, metadata))


def test_v3_rejects_tensors_missing_from_the_table(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts()
    tensors["stray"] = torch.zeros(2)
    with pytest.raises(ExportError, match="does not list"):
        load_sparse(write_raw(tmp_path / "s.safetensors", tensors, metadata))


def test_v3_rejects_corrupt_payload_bytes(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts()
    v_offset, v_count = json.loads(metadata["tensors"])["v"][3:]
    blob = tensors[BLOB_KEY].clone()
    blob[v_offset : v_offset + 4] = 0  # the first stored value becomes +0.0
    with pytest.raises(ExportError, match="stored values contain zeros"):
        load_sparse(write_raw(tmp_path / "z.safetensors", {**tensors, BLOB_KEY: blob}, metadata))
    blob = tensors[BLOB_KEY].clone()
    end = v_offset + v_count * 8
    blob[end - 4 : end] = torch.tensor([255, 255, 0, 0], dtype=torch.uint8)  # last index 65535 > 2499
    with pytest.raises(ExportError, match="outside"):
        load_sparse(write_raw(tmp_path / "i.safetensors", {**tensors, BLOB_KEY: blob}, metadata))

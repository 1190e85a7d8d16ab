"""Crafted sparse files: every reader refuses them with one ``ExportError``, before allocating what they declare.

Classes covered: a tiny file declaring a huge tensor (the decoded size is bounded by what the file stores, not
by the machine's memory), a table whose slots hold values of the wrong JSON type, keys containing the reserved
``::`` (the blob's own key among them), a table nested deeper than any file we write, a table that is not an
object.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from export_samples import sparse_weights, valid_parts, write_raw
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export import sparse_codec
from adapmtl_cli.export.sparse_codec import decode_sparse, encode_sparse, load_sparse, save_sparse
from adapmtl_cli.export.sparse_layout import BLOB_KEY, pack_v3
from adapmtl_cli.files.reading import MAX_JSON_DEPTH


def _huge_v3(numel: int) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A version-3 file of one indices-encoded float32 tensor of ``numel`` elements with one stored value."""
    blob = torch.cat([torch.tensor([1.0]).view(torch.uint8), torch.tensor([0], dtype=torch.int32).view(torch.uint8)])
    table = {"w": ["indices", "float32", [numel], 0, 1]}
    return {BLOB_KEY: blob}, {"format": "adapmtl-sparse", "version": "3", "tensors": json.dumps(table)}


def test_a_tiny_file_declaring_eight_gib_is_refused_before_any_allocation(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "h.safetensors", *_huge_v3(2**31 - 8))
    assert path.stat().st_size < 256
    start = time.perf_counter()
    with pytest.raises(ExportError, match="would decode to 8589934560 bytes, more than the limit") as info:
        load_sparse(path)
    assert "h.safetensors" in str(info.value) and "max_bytes" in str(info.value)
    with pytest.raises(ExportError, match="more than the limit"):
        decode_sparse(*_huge_v3(2**31 - 8))
    assert time.perf_counter() - start < 1.0


def test_the_limit_is_a_multiple_of_what_the_file_stores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sparse_codec, "DECODE_FLOOR", 1024)
    # 1 value in 100 000 elements: 8 bytes stored, 400 000 decoded (50 000 times as much).
    path = write_raw(tmp_path / "s.safetensors", *_huge_v3(100_000))
    with pytest.raises(ExportError, match="more than the limit of 8192"):
        load_sparse(path)
    assert int((load_sparse(path, max_bytes=400_000)["w"] != 0).sum()) == 1
    # A real file 99.9% sparse stores more than 1/1024 of its decoded size: read without max_bytes.
    state = {"w": sparse_weights((200, 500), 0.999, torch.float32)}
    save_sparse(state, tmp_path / "real.safetensors")
    assert torch.equal(load_sparse(tmp_path / "real.safetensors")["w"], state["w"])


def test_the_floor_lets_small_files_decode_whatever_their_ratio(tmp_path: Path) -> None:
    state = {"zeros": torch.zeros(1000, 1000), "w": sparse_weights((10, 10), 0.5, torch.float32)}
    save_sparse(state, tmp_path / "z.safetensors")
    assert torch.equal(load_sparse(tmp_path / "z.safetensors")["zeros"], state["zeros"])


# --- table slots of the wrong type: every one an ExportError, never a TypeError ------------------------

_ODD_VALUES: list[object] = [["float32"], {"a": 1}, None, 1.5, True, -8, 2**70, "x" * 200, [[[]]]]


def _v3() -> tuple[dict[str, Tensor], dict[str, str]]:
    state = {
        "w": sparse_weights((64, 64), 0.9, torch.float32),  # bitmask
        "b": torch.rand(5),  # dense
        "v": sparse_weights((50, 50), 0.99, torch.float32, seed=1),  # indices
    }
    return pack_v3(*encode_sparse(state, values_dtype=torch.float16))


def _v3_cases() -> list[tuple[str, int, object]]:
    table = json.loads(_v3()[1]["tensors"])
    return [(name, slot, odd) for name in ("w", "v", "b") for slot in range(len(table[name])) for odd in _ODD_VALUES]


@pytest.mark.parametrize(("name", "slot", "odd"), _v3_cases())
def test_every_slot_of_a_v3_table_entry_is_checked(tmp_path: Path, name: str, slot: int, odd: object) -> None:
    tensors, metadata = _v3()
    table = json.loads(metadata["tensors"])
    table[name][slot] = odd
    path = write_raw(tmp_path / "t.safetensors", tensors, {**metadata, "tensors": json.dumps(table)})
    with pytest.raises(ExportError) as info:
        load_sparse(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("field", ["encoding", "shape", "dtype", "values_dtype"])
@pytest.mark.parametrize("odd", _ODD_VALUES)
def test_every_field_of_a_v2_table_entry_is_checked(tmp_path: Path, field: str, odd: object) -> None:
    tensors, metadata = encode_sparse({"w": sparse_weights((64, 64), 0.9, torch.float32)}, values_dtype=torch.float16)
    table = json.loads(metadata["tensors"])
    table["w"][field] = odd
    path = write_raw(tmp_path / "t.safetensors", tensors, {**metadata, "tensors": json.dumps(table)})
    with pytest.raises(ExportError):
        load_sparse(path)


@pytest.mark.parametrize("odd", _ODD_VALUES)
def test_the_file_wide_values_dtype_is_checked(tmp_path: Path, odd: object) -> None:
    tensors, metadata = _v3()
    path = write_raw(tmp_path / "t.safetensors", tensors, {**metadata, "values_dtype": json.dumps(odd)})
    with pytest.raises(ExportError, match="values_dtype"):
        load_sparse(path)


# --- keys: '::' is reserved, the blob's key included -----------------------------------------------------


def test_a_v3_table_listing_its_own_blob_is_refused(tmp_path: Path) -> None:
    tensors, metadata = _v3()
    table = json.loads(metadata["tensors"])
    table[BLOB_KEY] = []
    path = write_raw(tmp_path / "t.safetensors", tensors, {**metadata, "tensors": json.dumps(table)})
    with pytest.raises(ExportError, match=r"'::sparse': the key contains '::'"):
        load_sparse(path)


def test_keys_with_the_separator_are_refused_in_every_version(tmp_path: Path) -> None:
    tensors, metadata = valid_parts()
    renamed = {key.replace("w", "a::w", 1): t for key, t in tensors.items()}
    table = {"a::w": json.loads(metadata["tensors"])["w"]}
    path = write_raw(tmp_path / "v1.safetensors", renamed, {**metadata, "tensors": json.dumps(table)})
    with pytest.raises(ExportError, match=r"'a::w': the key contains '::', which the format reserves"):
        load_sparse(path)
    packed, packed_metadata = pack_v3(renamed, {**metadata, "tensors": json.dumps(table)})
    with pytest.raises(ExportError, match="the key contains '::'"):
        decode_sparse(packed, packed_metadata)


# --- the table itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "3"])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 300_000 + "]" * 300_000, f"more than {MAX_JSON_DEPTH} levels deep"),
        ('{"w": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}", "levels deep"),
        ("[1, 2]", "is a JSON array, expected an object"),
        ('{"w": [', "is not valid JSON"),
        ("", "is not valid JSON"),
    ],
)
def test_a_malformed_table_is_refused(tmp_path: Path, version: str, text: str, message: str) -> None:
    tensors, metadata = valid_parts() if version == "1" else _v3()
    path = write_raw(tmp_path / "t.safetensors", tensors, {**metadata, "tensors": text})
    with pytest.raises(ExportError, match=message):
        load_sparse(path)

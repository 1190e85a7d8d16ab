"""Sparse safetensors codec: bit-exact round trips, encoding choice, sizes, rejection of malformed files."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.sparse_codec import (
    BLOB_KEY,
    canonicalize_zeros,
    cast_state,
    decode_sparse,
    encode_sparse,
    load_sparse,
    pack_v3,
    save_sparse,
)

_INT_VIEWS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _sparse_tensor(shape: tuple[int, ...], sparsity: float, dtype: torch.dtype, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator).to(dtype)
    keep = torch.rand(shape, generator=generator) >= sparsity
    return values * keep.to(dtype)  # randn never yields an exact zero, so sparsity is what was asked


def _assert_bit_equal(got: Tensor, want: Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    view = _INT_VIEWS.get(want.dtype, want.dtype)
    assert torch.equal(got.contiguous().view(view), canonicalize_zeros(want).contiguous().view(view))


def _write_raw(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98, 1.0])
def test_round_trip_is_bit_exact(tmp_path: Path, sparsity: float, dtype: torch.dtype) -> None:
    state = {
        "conv.weight": _sparse_tensor((32, 16, 3, 3), sparsity, dtype),
        "fc.weight": _sparse_tensor((200, 100), sparsity, dtype, seed=1),
        "conv.bias": torch.randn(32).to(dtype),
        "bn.num_batches_tracked": torch.tensor(7),
        "scalar": torch.tensor(2.5, dtype=dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
        "flags": torch.tensor([True, False, True]),
    }
    save_sparse(state, tmp_path / "m.sparse.safetensors")
    loaded = load_sparse(tmp_path / "m.sparse.safetensors")
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        _assert_bit_equal(loaded[name], tensor)


@pytest.mark.parametrize(
    ("sparsity", "encoding"), [(0.0, "dense"), (0.5, "bitmask"), (0.9, "bitmask"), (0.99, "indices")]
)
def test_chosen_encoding_is_the_smallest(sparsity: float, encoding: str) -> None:
    _, metadata = encode_sparse({"w": _sparse_tensor((100, 100), sparsity, torch.float32)})
    assert json.loads(metadata["tensors"])["w"]["encoding"] == encoding


def test_small_and_integer_tensors_stay_dense() -> None:
    state = {"bias": torch.zeros(4), "steps": torch.zeros(1000, dtype=torch.int64)}
    stored, metadata = encode_sparse(state)
    assert {entry["encoding"] for entry in json.loads(metadata["tensors"]).values()} == {"dense"}
    assert set(stored) == {"bias", "steps"}


@pytest.mark.parametrize(("sparsity", "max_ratio"), [(0.9, 0.14), (0.95, 0.09), (0.98, 0.045)])
def test_file_size_against_dense(tmp_path: Path, sparsity: float, max_ratio: float) -> None:
    weight = _sparse_tensor((1000, 1000), sparsity, torch.float32)
    stats = save_sparse({"w": weight}, tmp_path / "w.safetensors")
    assert stats.dense_bytes == 4_000_000
    assert stats.sparse_bytes == (tmp_path / "w.safetensors").stat().st_size
    assert stats.sparse_bytes / stats.dense_bytes <= max_ratio
    assert stats.tensors == 1 and sum(stats.encodings.values()) == 1


def test_negative_zero_is_canonicalised(tmp_path: Path) -> None:
    weight = torch.tensor([[-0.0, 1.0, 0.0, -2.0]] * 64)
    save_sparse({"w": weight, "b": torch.tensor([-0.0, 3.0])}, tmp_path / "z.safetensors")
    loaded = load_sparse(tmp_path / "z.safetensors")
    assert not torch.signbit(loaded["w"][:, 0]).any()
    assert not torch.signbit(loaded["b"][0])
    assert torch.equal(loaded["w"], weight)  # -0.0 == +0.0 numerically


def test_nan_and_inf_survive_bit_exact(tmp_path: Path) -> None:
    weight = torch.zeros(4096)
    weight[[3, 100, 4000]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    save_sparse({"w": weight}, tmp_path / "n.safetensors")
    _assert_bit_equal(load_sparse(tmp_path / "n.safetensors")["w"], weight)


def test_non_contiguous_and_shared_tensors_encode(tmp_path: Path) -> None:
    base = _sparse_tensor((64, 32), 0.9, torch.float32)
    state = {"a": base.t(), "b": base, "c": base[::2]}
    save_sparse(state, tmp_path / "s.safetensors")
    loaded = load_sparse(tmp_path / "s.safetensors")
    for name, tensor in state.items():
        _assert_bit_equal(loaded[name], tensor)


def test_file_is_ordinary_safetensors_with_string_metadata(tmp_path: Path) -> None:
    bias = torch.rand(7)
    save_sparse({"w": _sparse_tensor((100, 100), 0.99, torch.float32), "b": bias}, tmp_path / "w.safetensors")
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


def test_version_1_and_2_files_stay_readable(tmp_path: Path) -> None:
    state = {"w": _sparse_tensor((40, 30), 0.9, torch.float32), "b": torch.rand(5)}
    for values_dtype, version in ((None, "1"), (torch.float16, "2")):
        tensors, metadata = encode_sparse(state, values_dtype=values_dtype)
        assert metadata["version"] == version
        loaded = load_sparse(_write_raw(tmp_path / f"v{version}.safetensors", tensors, metadata))
        for name, tensor in cast_state(state, values_dtype).items():
            _assert_bit_equal(loaded[name], tensor)


def test_state_dict_order_survives(tmp_path: Path) -> None:
    state = {"z.weight": _sparse_tensor((30, 30), 0.9, torch.float32), "a.bias": torch.rand(3), "m": torch.zeros(9)}
    save_sparse(state, tmp_path / "o.safetensors")
    assert list(load_sparse(tmp_path / "o.safetensors")) == list(state)


def test_decode_sparse_inverts_encode_sparse() -> None:
    state = {
        "w": _sparse_tensor((10, 300), 0.9, torch.bfloat16),
        "v": _sparse_tensor((500,), 0.995, torch.float16),
    }
    decoded = decode_sparse(*encode_sparse(state))
    for name, tensor in state.items():
        _assert_bit_equal(decoded[name], tensor)


def test_reserved_separator_in_key_is_rejected() -> None:
    with pytest.raises(ExportError, match="reserves"):
        encode_sparse({"a::values": torch.zeros(3)})


@functools.cache
def _model_like_state(sparsity: float) -> dict[str, Tensor]:
    """A ResNet-stage-sized state_dict: big sparse convs plus the small dense tensors around them (read-only)."""
    state: dict[str, Tensor] = {}
    for i, (cout, cin) in enumerate([(256, 128), (256, 256), (512, 256), (512, 512)]):
        state[f"layer{i}.conv.weight"] = _sparse_tensor((cout, cin, 3, 3), sparsity, torch.float32, seed=i)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            state[f"layer{i}.bn.{stat}"] = torch.rand(cout)
        state[f"layer{i}.bn.num_batches_tracked"] = torch.tensor(100)
    return state


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
@pytest.mark.parametrize("values_dtype", [None, torch.float16])
def test_file_is_within_two_percent_of_the_better_encoding(
    tmp_path: Path, sparsity: float, values_dtype: torch.dtype | None
) -> None:
    state = _model_like_state(sparsity)
    stats = save_sparse(state, tmp_path / "m.safetensors", values_dtype=values_dtype)
    assert stats.theoretical_bytes <= stats.payload_bytes < stats.sparse_bytes
    assert stats.sparse_bytes <= 1.02 * stats.theoretical_bytes
    if sparsity == 0.9 and values_dtype is None:
        assert stats.sparse_bytes <= 0.14 * stats.dense_bytes  # the acceptance bound for fp32 values


# --- narrow values (format version 2) ------------------------------------------------------------


@pytest.mark.parametrize("values_dtype", [torch.float16, torch.bfloat16])
def test_narrow_values_decode_to_the_cast_state_in_the_original_dtypes(
    tmp_path: Path, values_dtype: torch.dtype
) -> None:
    state = {
        "conv.weight": _sparse_tensor((64, 32, 3, 3), 0.9, torch.float32),
        "fc.weight": _sparse_tensor((100, 100), 0.99, torch.float64, seed=2),
        "bn.running_var": torch.rand(64) + 0.5,
        "half.weight": _sparse_tensor((40, 40), 0.9, torch.float16, seed=3),  # not wider: stored as is
        "steps": torch.tensor(3),
    }
    state["conv.weight"].view(-1)[:5] = torch.tensor([1e-9, -1e-9, -0.0, 1.0 + 2**-20, float("inf")])
    stats = save_sparse(state, tmp_path / "n.safetensors", values_dtype=values_dtype)
    _, metadata = encode_sparse(state, values_dtype=values_dtype)
    assert metadata["version"] == "2"
    table = json.loads(metadata["tensors"])
    assert table["conv.weight"]["dtype"] == "float32"
    assert table["conv.weight"]["values_dtype"] == str(values_dtype).removeprefix("torch.")
    assert "values_dtype" not in table["half.weight"] and "values_dtype" not in table["steps"]
    loaded = load_sparse(tmp_path / "n.safetensors")
    want = cast_state(state, values_dtype)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        _assert_bit_equal(loaded[name], want[name])
    assert torch.equal(loaded["half.weight"], state["half.weight"])
    assert stats.values_dtype == str(values_dtype).removeprefix("torch.")


def test_narrow_values_halve_the_file(tmp_path: Path) -> None:
    state = _model_like_state(0.9)
    wide = save_sparse(state, tmp_path / "w.safetensors")
    narrow = save_sparse(state, tmp_path / "h.safetensors", values_dtype=torch.float16)
    # bitmask at 90%: (0.1 * 2 + 1/8) / (0.1 * 4 + 1/8) of the payload
    assert narrow.sparse_bytes <= 0.63 * wide.sparse_bytes


def test_files_without_narrow_values_stay_version_1() -> None:
    _, metadata = encode_sparse({"w": torch.zeros(3, dtype=torch.float16)}, values_dtype=torch.float16)
    assert metadata["version"] == "1"


def test_float16_overflow_is_refused() -> None:
    with pytest.raises(ExportError, match=r"tensor 'bn.running_var' holds 1e\+05, beyond the range of float16.*bf16"):
        encode_sparse({"bn.running_var": torch.tensor([1.0, 1e5])}, values_dtype=torch.float16)
    encode_sparse({"bn.running_var": torch.tensor([1.0, 1e5])}, values_dtype=torch.bfloat16)


def test_unsupported_values_dtype_is_refused() -> None:
    with pytest.raises(ExportError, match="values dtype torch.int8 is not supported"):
        encode_sparse({"w": torch.zeros(3)}, values_dtype=torch.int8)


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
    tensors, metadata = encode_sparse({"w": _sparse_tensor((64, 64), 0.9, torch.float32)}, values_dtype=torch.float16)
    path = _write_raw(
        tmp_path / "d.safetensors", tensors, {**_with_table(metadata, values_dtype=values_dtype), "version": version}
    )
    with pytest.raises(ExportError, match=message):
        load_sparse(path)


def test_rejects_values_stored_wider_than_declared(tmp_path: Path) -> None:
    tensors, metadata = encode_sparse({"w": _sparse_tensor((64, 64), 0.9, torch.float32)}, values_dtype=torch.float16)
    tensors["w::values"] = tensors["w::values"].float()
    with pytest.raises(ExportError, match=r"values are \[\d+\] torch.float32, expected one dimension of torch.float16"):
        load_sparse(_write_raw(tmp_path / "x.safetensors", tensors, metadata))


# --- malformed files ---------------------------------------------------------------------------


def _valid_parts(sparsity: float = 0.9) -> tuple[dict[str, Tensor], dict[str, str]]:
    return encode_sparse({"w": _sparse_tensor((64, 64), sparsity, torch.float32)})


def _with_table(metadata: dict[str, str], **changes: object) -> dict[str, str]:
    table = json.loads(metadata["tensors"])
    table["w"].update(changes)
    return {**metadata, "tensors": json.dumps(table)}


def test_rejects_unknown_version(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts()
    path = _write_raw(tmp_path / "v.safetensors", tensors, {**metadata, "version": "4"})
    with pytest.raises(ExportError, match=r"unknown sparse format version .4."):
        load_sparse(path)


def test_rejects_plain_safetensors(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "p.safetensors", {"w": torch.zeros(3)}, {})
    with pytest.raises(ExportError, match="not an adapmtl sparse file"):
        load_sparse(path)


def test_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot read sparse file"):
        load_sparse(tmp_path / "absent.safetensors")


def test_rejects_missing_key(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts()
    del tensors["w::mask"]
    with pytest.raises(ExportError, match=r"missing \['w::mask'\]"):
        load_sparse(_write_raw(tmp_path / "k.safetensors", tensors, metadata))


def test_rejects_values_count_mismatch(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts()
    tensors["w::values"] = tensors["w::values"][:-1].clone()
    with pytest.raises(ExportError, match="values are stored"):
        load_sparse(_write_raw(tmp_path / "c.safetensors", tensors, metadata))


def test_rejects_mask_of_wrong_length(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts()
    tensors["w::mask"] = tensors["w::mask"][:-1].clone()
    with pytest.raises(ExportError, match="mask is"):
        load_sparse(_write_raw(tmp_path / "m.safetensors", tensors, metadata))


def test_rejects_mask_bits_past_the_end(tmp_path: Path) -> None:
    tensors, metadata = encode_sparse({"w": _sparse_tensor((13, 7), 0.6, torch.float32)})  # 91 bits
    tensors["w::mask"][-1] |= 1
    tensors["w::values"] = torch.cat([tensors["w::values"], torch.ones(1)])
    with pytest.raises(ExportError, match="past the last element"):
        load_sparse(_write_raw(tmp_path / "b.safetensors", tensors, metadata))


def test_rejects_index_out_of_range(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts(0.99)
    tensors["w::indices"][-1] = 64 * 64
    with pytest.raises(ExportError, match=r"outside \[0, 4096\)"):
        load_sparse(_write_raw(tmp_path / "r.safetensors", tensors, metadata))


def test_rejects_non_increasing_indices(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts(0.99)
    tensors["w::indices"][[0, 1]] = tensors["w::indices"][[1, 0]].clone()
    with pytest.raises(ExportError, match="not strictly increasing"):
        load_sparse(_write_raw(tmp_path / "i.safetensors", tensors, metadata))


def test_rejects_zero_among_stored_values(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts()
    tensors["w::values"][0] = 0.0
    with pytest.raises(ExportError, match="values contain zeros"):
        load_sparse(_write_raw(tmp_path / "z.safetensors", tensors, metadata))


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
    tensors, metadata = _valid_parts()
    path = _write_raw(tmp_path / "e.safetensors", tensors, _with_table(metadata, **change))
    with pytest.raises(ExportError, match=message):
        load_sparse(path)


@pytest.mark.parametrize(
    ("sparsity", "shape", "message"),
    [
        (0.99, [2**40], "more than the limit"),  # all-zero-looking indices tensor of 4 TiB
        (0.99, [2**31, 2**31, 2**31], "impossibly large"),
        (0.9, [2**40], "mask is"),  # a bitmask bounds numel by its own length
    ],
)
def test_crafted_huge_shape_fails_fast(tmp_path: Path, sparsity: float, shape: list[int], message: str) -> None:
    tensors, metadata = _valid_parts(sparsity)
    if sparsity > 0.95:
        tensors["w::indices"] = tensors["w::indices"].long()  # what a 2**40-element tensor would use
    path = _write_raw(tmp_path / "h.safetensors", tensors, _with_table(metadata, shape=shape))
    start = time.perf_counter()
    with pytest.raises(ExportError, match=message):
        load_sparse(path)
    assert time.perf_counter() - start < 1.0


def test_crafted_shape_is_also_refused_by_decode_sparse() -> None:
    tensors, metadata = encode_sparse({"w": torch.zeros(1000)})
    tensors["w::indices"] = tensors["w::indices"].long()
    with pytest.raises(ExportError, match="more than the limit"):
        decode_sparse(tensors, _with_table(metadata, shape=[2**45]))


# --- property ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
    sparsity=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
    values_dtype=st.sampled_from([None, torch.float16, torch.bfloat16]),
)
def test_property_round_trip(
    shape: list[int], sparsity: float, dtype: torch.dtype, seed: int, values_dtype: torch.dtype | None
) -> None:
    tensor = _sparse_tensor(tuple(shape), sparsity, dtype, seed)
    if tensor.numel():
        tensor.view(-1)[0] = -0.0
    decoded = decode_sparse(*encode_sparse({"t": tensor}, values_dtype=values_dtype))
    _assert_bit_equal(decoded["t"], cast_state({"t": tensor}, values_dtype)["t"])


# --- version 3: one blob, compact table --------------------------------------------------------------


def _v3_parts(values_dtype: torch.dtype | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    state = {
        "w": _sparse_tensor((64, 64), 0.9, torch.float32),  # bitmask
        "b": torch.rand(5),  # dense
        "v": _sparse_tensor((50, 50), 0.99, torch.float32, seed=1),  # indices
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
    assert torch.equal(decoded["v"], _sparse_tensor((50, 50), 0.99, torch.float32, seed=1))


def test_v3_narrow_values_round_trip(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts(torch.bfloat16)
    assert metadata["values_dtype"] == "bfloat16"
    assert json.loads(metadata["tensors"])["b"] == ["dense", "float32"]
    decoded = load_sparse(_write_raw(tmp_path / "n.safetensors", tensors, metadata))
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
    path = _write_raw(tmp_path / "t.safetensors", tensors, _with_v3_entry(metadata, name, entry))
    with pytest.raises(ExportError, match=message):
        load_sparse(path)


def test_v3_rejects_a_blob_longer_than_its_table(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts()
    tensors[BLOB_KEY] = torch.cat([tensors[BLOB_KEY], torch.zeros(8, dtype=torch.uint8)])
    with pytest.raises(ExportError, match="table accounts for"):
        load_sparse(_write_raw(tmp_path / "l.safetensors", tensors, metadata))


def test_v3_rejects_tensors_missing_from_the_table(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts()
    tensors["stray"] = torch.zeros(2)
    with pytest.raises(ExportError, match="does not list"):
        load_sparse(_write_raw(tmp_path / "s.safetensors", tensors, metadata))


def test_v3_rejects_corrupt_payload_bytes(tmp_path: Path) -> None:
    tensors, metadata = _v3_parts()
    v_offset, v_count = json.loads(metadata["tensors"])["v"][3:]
    blob = tensors[BLOB_KEY].clone()
    blob[v_offset : v_offset + 4] = 0  # the first stored value becomes +0.0
    with pytest.raises(ExportError, match="stored values contain zeros"):
        load_sparse(_write_raw(tmp_path / "z.safetensors", {**tensors, BLOB_KEY: blob}, metadata))
    blob = tensors[BLOB_KEY].clone()
    end = v_offset + v_count * 8
    blob[end - 4 : end] = torch.tensor([255, 255, 0, 0], dtype=torch.uint8)  # last index 65535 > 2499
    with pytest.raises(ExportError, match="outside"):
        load_sparse(_write_raw(tmp_path / "i.safetensors", {**tensors, BLOB_KEY: blob}, metadata))


def test_reference_model_file_is_within_two_percent_of_theory(tmp_path: Path) -> None:
    """The acceptance bound on a real, many-tensor model (MobileNetV2 MTL, 384 tensors) at 98%: the whole file,
    header included, against the sum of the best encodings' payloads."""
    from adapmtl_cli.models import MODELS

    torch.manual_seed(0)
    state = MODELS["mobilenet_v2"]().state_dict()
    weights = torch.cat([t.abs().flatten() for t in state.values() if t.dim() > 1])
    cut = weights.kthvalue(int(0.98 * weights.numel())).values
    state = {k: t * (t.abs() > cut) if t.dim() > 1 else t for k, t in state.items()}
    stats = save_sparse(state, tmp_path / "m.safetensors")
    assert stats.sparse_bytes <= 1.02 * stats.theoretical_bytes

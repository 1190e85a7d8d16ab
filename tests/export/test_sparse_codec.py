"""Sparse safetensors files: bit-exact round trips, sizes against theory, narrow values, the dense check."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest
import torch
from export_samples import assert_bit_equal, pruned_model, sparse_weights, valid_parts, with_table, write_raw
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.sparse_codec import (
    check_sparse_roundtrip,
    decode_sparse,
    encode_sparse,
    load_sparse,
    save_sparse,
)
from adapmtl_cli.export.sparse_tensor import cast_state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98, 1.0])
def test_round_trip_is_bit_exact(tmp_path: Path, sparsity: float, dtype: torch.dtype) -> None:
    state = {
        "conv.weight": sparse_weights((32, 16, 3, 3), sparsity, dtype),
        "fc.weight": sparse_weights((200, 100), sparsity, dtype, seed=1),
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
        assert_bit_equal(loaded[name], tensor)


@pytest.mark.parametrize(("sparsity", "max_ratio"), [(0.9, 0.14), (0.95, 0.09), (0.98, 0.045)])
def test_file_size_against_dense(tmp_path: Path, sparsity: float, max_ratio: float) -> None:
    weight = sparse_weights((1000, 1000), sparsity, torch.float32)
    stats = save_sparse({"w": weight}, tmp_path / "w.safetensors")
    assert stats.dense_bytes == 4_000_000
    assert stats.sparse_bytes == (tmp_path / "w.safetensors").stat().st_size
    assert stats.sparse_bytes / stats.dense_bytes <= max_ratio
    assert stats.tensors == 1 and sum(stats.encodings.values()) == 1


def test_non_contiguous_and_shared_tensors_encode(tmp_path: Path) -> None:
    base = sparse_weights((64, 32), 0.9, torch.float32)
    state = {"a": base.t(), "b": base, "c": base[::2]}
    save_sparse(state, tmp_path / "s.safetensors")
    loaded = load_sparse(tmp_path / "s.safetensors")
    for name, tensor in state.items():
        assert_bit_equal(loaded[name], tensor)


def test_state_dict_order_survives(tmp_path: Path) -> None:
    state = {"z.weight": sparse_weights((30, 30), 0.9, torch.float32), "a.bias": torch.rand(3), "m": torch.zeros(9)}
    save_sparse(state, tmp_path / "o.safetensors")
    assert list(load_sparse(tmp_path / "o.safetensors")) == list(state)


def test_decode_sparse_inverts_encode_sparse() -> None:
    state = {
        "w": sparse_weights((10, 300), 0.9, torch.bfloat16),
        "v": sparse_weights((500,), 0.995, torch.float16),
    }
    decoded = decode_sparse(*encode_sparse(state))
    for name, tensor in state.items():
        assert_bit_equal(decoded[name], tensor)


def test_reserved_separator_in_key_is_rejected() -> None:
    with pytest.raises(ExportError, match="reserves"):
        encode_sparse({"a::values": torch.zeros(3)})


@functools.cache
def _model_like_state(sparsity: float) -> dict[str, Tensor]:
    """A ResNet-stage-sized state_dict: big sparse convs plus the small dense tensors around them (read-only)."""
    state: dict[str, Tensor] = {}
    for i, (cout, cin) in enumerate([(256, 128), (256, 256), (512, 256), (512, 512)]):
        state[f"layer{i}.conv.weight"] = sparse_weights((cout, cin, 3, 3), sparsity, torch.float32, seed=i)
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


# --- narrow values (format version 2) -------------------------------------------------------------


@pytest.mark.parametrize("values_dtype", [torch.float16, torch.bfloat16])
def test_narrow_values_decode_to_the_cast_state_in_the_original_dtypes(
    tmp_path: Path, values_dtype: torch.dtype
) -> None:
    state = {
        "conv.weight": sparse_weights((64, 32, 3, 3), 0.9, torch.float32),
        "fc.weight": sparse_weights((100, 100), 0.99, torch.float64, seed=2),
        "bn.running_var": torch.rand(64) + 0.5,
        "half.weight": sparse_weights((40, 40), 0.9, torch.float16, seed=3),  # not wider: stored as is
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
        assert_bit_equal(loaded[name], want[name])
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


# --- missing and crafted files --------------------------------------------------------------------


def test_rejects_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="absent.safetensors' does not exist"):
        load_sparse(tmp_path / "absent.safetensors")
    with pytest.raises(ExportError, match="is not a regular file"):
        load_sparse(tmp_path)


@pytest.mark.parametrize(
    ("sparsity", "shape", "message"),
    [
        (0.99, [2**40], "more than the limit"),  # all-zero-looking indices tensor of 4 TiB
        (0.99, [2**31, 2**31, 2**31], "impossibly large"),
        (0.9, [2**40], "mask is"),  # a bitmask bounds numel by its own length
    ],
)
def test_crafted_huge_shape_fails_fast(tmp_path: Path, sparsity: float, shape: list[int], message: str) -> None:
    tensors, metadata = valid_parts(sparsity)
    if sparsity > 0.95:
        tensors["w::indices"] = tensors["w::indices"].long()  # what a 2**40-element tensor would use
    path = write_raw(tmp_path / "h.safetensors", tensors, with_table(metadata, shape=shape))
    start = time.perf_counter()
    with pytest.raises(ExportError, match=message):
        load_sparse(path)
    assert time.perf_counter() - start < 1.0


def test_crafted_shape_is_also_refused_by_decode_sparse() -> None:
    tensors, metadata = encode_sparse({"w": torch.zeros(1000)})
    tensors["w::indices"] = tensors["w::indices"].long()
    with pytest.raises(ExportError, match="more than the limit"):
        decode_sparse(tensors, with_table(metadata, shape=[2**45]))


# --- the bit-exact check against the dense weights ------------------------------------------------


def test_sparse_round_trip_check_passes_and_catches_differences(tmp_path: Path) -> None:
    state = pruned_model().state_dict()
    save_sparse(state, tmp_path / "m.sparse.safetensors")
    check_sparse_roundtrip(state, tmp_path / "m.sparse.safetensors")

    changed = dict(state)
    changed["heads.depth.2.bias"] = state["heads.depth.2.bias"] + 1e-7
    changed["extra.weight"] = torch.zeros(2)
    with pytest.raises(ExportError, match=r"missing keys \['extra.weight'\]; 'heads.depth.2.bias' values differ"):
        check_sparse_roundtrip(changed, tmp_path / "m.sparse.safetensors")

    retyped = {**state, "heads.depth.2.bias": state["heads.depth.2.bias"].double()}
    with pytest.raises(ExportError, match="is torch.float32 .*expected torch.float64"):
        check_sparse_roundtrip(retyped, tmp_path / "m.sparse.safetensors")


def test_sparse_round_trip_with_narrow_values_compares_with_the_rounded_weights(tmp_path: Path) -> None:
    state = pruned_model().state_dict()
    save_sparse(state, tmp_path / "h.safetensors", values_dtype=torch.float16)
    check_sparse_roundtrip(state, tmp_path / "h.safetensors", values_dtype=torch.float16)
    with pytest.raises(ExportError, match="values differ"):
        check_sparse_roundtrip(state, tmp_path / "h.safetensors")


def test_sparse_round_trip_treats_negative_zero_as_zero(tmp_path: Path) -> None:
    state = {"w": torch.tensor([-0.0, 1.0] * 100)}
    save_sparse(state, tmp_path / "z.safetensors")
    check_sparse_roundtrip(state, tmp_path / "z.safetensors")

"""One tensor's encodings: the smallest is chosen, zeros and specials survive, malformed parts are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_samples import assert_bit_equal, sparse_weights, valid_parts, write_raw
from hypothesis import given, settings
from hypothesis import strategies as st

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.sparse_codec import decode_sparse, encode_sparse, load_sparse, save_sparse
from adapmtl_cli.export.sparse_tensor import cast_state


@pytest.mark.parametrize(
    ("sparsity", "encoding"), [(0.0, "dense"), (0.5, "bitmask"), (0.9, "bitmask"), (0.99, "indices")]
)
def test_chosen_encoding_is_the_smallest(sparsity: float, encoding: str) -> None:
    _, metadata = encode_sparse({"w": sparse_weights((100, 100), sparsity, torch.float32)})
    assert json.loads(metadata["tensors"])["w"]["encoding"] == encoding


def test_small_and_integer_tensors_stay_dense() -> None:
    state = {"bias": torch.zeros(4), "steps": torch.zeros(1000, dtype=torch.int64)}
    stored, metadata = encode_sparse(state)
    assert {entry["encoding"] for entry in json.loads(metadata["tensors"]).values()} == {"dense"}
    assert set(stored) == {"bias", "steps"}


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
    assert_bit_equal(load_sparse(tmp_path / "n.safetensors")["w"], weight)


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
    tensor = sparse_weights(tuple(shape), sparsity, dtype, seed)
    if tensor.numel():
        tensor.view(-1)[0] = -0.0
    decoded = decode_sparse(*encode_sparse({"t": tensor}, values_dtype=values_dtype))
    assert_bit_equal(decoded["t"], cast_state({"t": tensor}, values_dtype)["t"])


# --- narrow values --------------------------------------------------------------------------------


def test_float16_overflow_is_refused() -> None:
    with pytest.raises(ExportError, match=r"tensor 'bn.running_var' holds 1e\+05, beyond the range of float16.*bf16"):
        encode_sparse({"bn.running_var": torch.tensor([1.0, 1e5])}, values_dtype=torch.float16)
    encode_sparse({"bn.running_var": torch.tensor([1.0, 1e5])}, values_dtype=torch.bfloat16)


def test_unsupported_values_dtype_is_refused() -> None:
    with pytest.raises(ExportError, match="values dtype torch.int8 is not supported"):
        encode_sparse({"w": torch.zeros(3)}, values_dtype=torch.int8)


# --- malformed parts ------------------------------------------------------------------------------


def test_rejects_values_count_mismatch(tmp_path: Path) -> None:
    tensors, metadata = valid_parts()
    tensors["w::values"] = tensors["w::values"][:-1].clone()
    with pytest.raises(ExportError, match="values are stored"):
        load_sparse(write_raw(tmp_path / "c.safetensors", tensors, metadata))


def test_rejects_mask_bits_past_the_end(tmp_path: Path) -> None:
    tensors, metadata = encode_sparse({"w": sparse_weights((13, 7), 0.6, torch.float32)})  # 91 bits
    tensors["w::mask"][-1] |= 1
    tensors["w::values"] = torch.cat([tensors["w::values"], torch.ones(1)])
    with pytest.raises(ExportError, match="past the last element"):
        load_sparse(write_raw(tmp_path / "b.safetensors", tensors, metadata))


def test_rejects_index_out_of_range(tmp_path: Path) -> None:
    tensors, metadata = valid_parts(0.99)
    tensors["w::indices"][-1] = 64 * 64
    with pytest.raises(ExportError, match=r"outside \[0, 4096\)"):
        load_sparse(write_raw(tmp_path / "r.safetensors", tensors, metadata))


def test_rejects_non_increasing_indices(tmp_path: Path) -> None:
    tensors, metadata = valid_parts(0.99)
    tensors["w::indices"][[0, 1]] = tensors["w::indices"][[1, 0]].clone()
    with pytest.raises(ExportError, match="not strictly increasing"):
        load_sparse(write_raw(tmp_path / "i.safetensors", tensors, metadata))


def test_rejects_zero_among_stored_values(tmp_path: Path) -> None:
    tensors, metadata = valid_parts()
    tensors["w::values"][0] = 0.0
    with pytest.raises(ExportError, match="values contain zeros"):
        load_sparse(write_raw(tmp_path / "z.safetensors", tensors, metadata))

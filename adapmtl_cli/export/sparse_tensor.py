"""One tensor's sparse encodings: stored dtypes, canonical zeros, the smallest encoding, encode and decode.

A tensor is stored ``dense`` (as is), ``bitmask`` (the non-zero values in row-major order plus a
``np.packbits`` mask of one bit per element) or ``indices`` (the values plus their strictly increasing int32
flat indices, int64 from 2**31 elements on), whichever is smallest. Decoding validates the parts and is
bit-exact, except that -0.0 comes back as +0.0 (a zero is a zero). With a narrow values dtype wider float
tensors are stored rounded to float16/bfloat16 and come back in their own dtype (:func:`cast_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from adapmtl_cli.errors import ExportError

# Floating dtypes whose -0.0 is the sign bit alone and whose zeros may be dropped; other dtypes stay dense.
SPARSE_DTYPES: dict[torch.dtype, torch.dtype] = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
# Every dtype the format stores, by the name its metadata uses.
FORMAT_DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}
# What ``--values-dtype`` accepts: the narrow float dtypes values may be stored in.
VALUES_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Flat indices (and the indices encoding's cost) are int32 below this many elements, int64 from it on.
INT32_LIMIT = 2**31
# In version 3 a sparse tensor costs one compact table entry where a dense one costs one safetensors header
# entry, about the same; a 16-byte margin keeps tiny tensors (biases of a few elements) dense and readable.
_HEADER_ENTRY_BYTES = 16


@dataclass(frozen=True)
class SparseEntry:
    """One tensor's row of a sparse file's table, validated: how it is encoded, its shape and dtypes."""

    encoding: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    values_dtype: torch.dtype  # the dtype the elements are stored in; ``dtype`` unless narrowed (version 2)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def keys(self, name: str) -> list[str]:
        if self.encoding == "dense":
            return [name]
        return [name + "::values", name + ("::mask" if self.encoding == "bitmask" else "::indices")]


def corrupt_entry(name: str, problem: str) -> ExportError:
    """The one-line error for a table entry or tensor part that cannot be what the writer wrote."""
    return ExportError(f"sparse file entry {name!r}: {problem}; the file is corrupt, re-export it")


def canonicalize_zeros(tensor: Tensor) -> Tensor:
    """Return ``tensor`` with every -0.0 replaced by +0.0; non-float tensors come back unchanged.

    Works on the bit pattern (-0.0 is the sign bit alone), so NaN payloads and all other values keep their
    bits.
    """
    int_dtype = SPARSE_DTYPES.get(tensor.dtype)
    if int_dtype is None:
        return tensor
    bits = tensor.contiguous().view(int_dtype)
    negative_zero = torch.iinfo(int_dtype).min
    return bits.masked_fill(bits == negative_zero, 0).view(tensor.dtype)


def cast_state(state: dict[str, Tensor], values_dtype: torch.dtype | None) -> dict[str, Tensor]:
    """What a file written with ``values_dtype`` decodes to: wider float tensors rounded through it.

    A float tensor whose elements take more bytes than ``values_dtype`` is rounded to it (round to nearest
    even) and cast back to its own dtype; every other tensor is returned as is. ``None`` changes nothing.
    """
    if values_dtype is None:
        return dict(state)
    return {name: _round_through(tensor, values_dtype) for name, tensor in state.items()}


def _round_through(tensor: Tensor, values_dtype: torch.dtype) -> Tensor:
    if not narrows(tensor.dtype, values_dtype):
        return tensor
    return tensor.detach().cpu().to(values_dtype).to(tensor.dtype)


def narrows(dtype: torch.dtype, values_dtype: torch.dtype | None) -> bool:
    return values_dtype is not None and dtype in SPARSE_DTYPES and dtype.itemsize > values_dtype.itemsize


def check_values_dtype(values_dtype: torch.dtype | None) -> None:
    if values_dtype is not None and values_dtype not in VALUES_DTYPES.values():
        raise ExportError(f"values dtype {values_dtype!r} is not supported; use one of {sorted(VALUES_DTYPES)} or none")


def check_range(name: str, tensor: Tensor, stored: Tensor) -> None:
    """Refuse a cast that turns finite values into infinities (float16 ends at 65504)."""
    overflow = torch.isinf(stored) & torch.isfinite(tensor)
    if bool(overflow.any()):
        largest = float(tensor[overflow].abs().max())
        raise ExportError(
            f"tensor {name!r} holds {largest:.4g}, beyond the range of {str(stored.dtype).removeprefix('torch.')}; "
            "use --values-dtype bf16 or keep the model's dtype"
        )


def encoding_costs(numel: int, nnz: int, item: int) -> dict[str, int]:
    """Payload bytes of each encoding for ``numel`` elements of ``item`` bytes, ``nnz`` of them non-zero.

    Without the header entry a sparse encoding adds; see ``docs/sparse-safetensors.md``.
    """
    index_item = 4 if numel < INT32_LIMIT else 8
    return {
        "dense": numel * item,
        "bitmask": nnz * item + math.ceil(numel / 8),
        "indices": nnz * (item + index_item),
    }


def encode_tensor(tensor: Tensor) -> tuple[str, dict[str, Tensor]]:
    if tensor.dtype not in SPARSE_DTYPES or tensor.numel() == 0:
        return "dense", {"": tensor.clone(memory_format=torch.contiguous_format)}
    flat = canonicalize_zeros(tensor).reshape(-1)
    nonzero = flat.view(SPARSE_DTYPES[tensor.dtype]) != 0
    numel, nnz = flat.numel(), int(nonzero.sum())
    index_dtype = torch.int32 if numel < INT32_LIMIT else torch.int64
    costs = encoding_costs(numel, nnz, flat.element_size())
    costs = {name: cost + (0 if name == "dense" else _HEADER_ENTRY_BYTES) for name, cost in costs.items()}
    encoding = min(costs, key=costs.__getitem__)  # ties keep the first: dense, then bitmask
    if encoding == "dense":
        return "dense", {"": flat.reshape(tensor.shape)}  # canonicalize_zeros already copied
    values = flat[nonzero]
    if encoding == "bitmask":
        mask = torch.from_numpy(np.packbits(nonzero.numpy()))
        return "bitmask", {"::values": values, "::mask": mask}
    indices = torch.nonzero(nonzero).reshape(-1).to(index_dtype)
    return "indices", {"::values": values, "::indices": indices}


def decode_tensor(name: str, entry: SparseEntry, tensors: dict[str, Tensor]) -> Tensor:
    if entry.encoding == "dense":
        return canonicalize_zeros(tensors[name]).to(entry.dtype)
    values, numel = tensors[name + "::values"], entry.numel
    bits = values.view(SPARSE_DTYPES[entry.values_dtype])
    if bool(((bits == 0) | (bits == torch.iinfo(bits.dtype).min)).any()):
        raise corrupt_entry(name, "stored values contain zeros")
    if entry.encoding == "bitmask":
        positions = _mask_positions(name, tensors[name + "::mask"], numel, values.numel())
    else:
        positions = _index_positions(name, tensors[name + "::indices"], numel)
    flat = torch.zeros(numel, dtype=entry.values_dtype)
    flat[positions] = values
    return flat.reshape(entry.shape).to(entry.dtype)  # widening is exact, so the round trip stays bit-exact


def _mask_positions(name: str, packed: Tensor, numel: int, count: int) -> Tensor:
    array = packed.numpy()
    if numel % 8 and int(array[-1]) & (0xFF >> (numel % 8)):
        raise corrupt_entry(name, "mask has bits set past the last element")
    mask = torch.from_numpy(np.unpackbits(array, count=numel).view(np.bool_))
    marked = int(mask.sum())
    if marked != count:
        raise corrupt_entry(name, f"mask marks {marked} elements but {count} values are stored")
    return mask


def _index_positions(name: str, indices: Tensor, numel: int) -> Tensor:
    positions = indices.long()
    if positions.numel() and (int(positions[0]) < 0 or int(positions[-1]) >= numel):
        raise corrupt_entry(name, f"indices run from {int(positions[0])} to {int(positions[-1])}, outside [0, {numel})")
    if positions.numel() > 1 and not bool((positions[1:] > positions[:-1]).all()):
        raise corrupt_entry(name, "indices are not strictly increasing")
    return positions

"""The sparse safetensors format: a state_dict stored as values plus a bitmask or flat indices per tensor.

Each tensor is stored in whichever of three encodings is smallest: ``dense`` (as is), ``bitmask`` (the
non-zero values in row-major order plus a ``np.packbits`` mask of one bit per element) or ``indices`` (the
values plus their strictly increasing int32 flat indices, int64 from 2**31 elements on). Shapes, dtypes and
encodings live in the safetensors metadata, so the file stays an ordinary safetensors file. The spec is
``docs/sparse-safetensors.md``; decoding is bit-exact, except that -0.0 comes back as +0.0 (a zero is a zero).
Files are written in format version 3 (all sparse payloads packed into one byte blob, a compact table);
versions 1 and 2 (one safetensors entry per part) are still read. With ``values_dtype`` wider float tensors
are stored rounded to float16/bfloat16 and come back in their own dtype, bit-exact with respect to
:func:`cast_state` of the input.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from adapmtl_cli.errors import ExportError

FORMAT_NAME = "adapmtl-sparse"
FORMAT_VERSION = "3"
"""The version :func:`save_sparse` writes: every sparse payload packed into one byte blob, a compact table."""
READ_VERSIONS = ("1", "2", "3")
KEY_SEPARATOR = "::"
BLOB_KEY = "::sparse"
"""The version-3 byte blob's key; state_dict keys cannot collide with it since they may not contain ``::``."""

# Floating dtypes whose -0.0 is the sign bit alone and whose zeros may be dropped; other dtypes stay dense.
_SPARSE_DTYPES: dict[torch.dtype, torch.dtype] = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
_DTYPES: dict[str, torch.dtype] = {
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
_INT32_LIMIT = 2**31
# In version 3 a sparse tensor costs one compact table entry where a dense one costs one safetensors header
# entry, about the same; a 16-byte margin keeps tiny tensors (biases of a few elements) dense and readable.
_HEADER_ENTRY_BYTES = 16


@dataclass(frozen=True)
class SparseStats:
    """Sizes of one written sparse file.

    ``dense_bytes`` is the raw tensor payload of the input state_dict; ``sparse_bytes`` is the size of the
    file on disk, header included; ``payload_bytes`` the tensor data the encoder chose, without any header;
    ``theoretical_bytes`` the sum over tensors of the smallest of the dense, bitmask and indices payloads
    (the bound the file is measured against); ``encodings`` counts tensors per encoding name.
    """

    dense_bytes: int
    sparse_bytes: int
    tensors: int
    encodings: dict[str, int]
    payload_bytes: int = 0
    theoretical_bytes: int = 0
    values_dtype: str | None = None


def canonicalize_zeros(tensor: Tensor) -> Tensor:
    """Return ``tensor`` with every -0.0 replaced by +0.0; non-float tensors come back unchanged.

    Works on the bit pattern (-0.0 is the sign bit alone), so NaN payloads and all other values keep their
    bits.
    """
    int_dtype = _SPARSE_DTYPES.get(tensor.dtype)
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
    if not _narrows(tensor.dtype, values_dtype):
        return tensor
    return tensor.detach().cpu().to(values_dtype).to(tensor.dtype)


def _narrows(dtype: torch.dtype, values_dtype: torch.dtype | None) -> bool:
    return values_dtype is not None and dtype in _SPARSE_DTYPES and dtype.itemsize > values_dtype.itemsize


def _check_values_dtype(values_dtype: torch.dtype | None) -> None:
    if values_dtype is not None and values_dtype not in VALUES_DTYPES.values():
        raise ExportError(f"values dtype {values_dtype!r} is not supported; use one of {sorted(VALUES_DTYPES)} or none")


def _check_range(name: str, tensor: Tensor, stored: Tensor) -> None:
    """Refuse a cast that turns finite values into infinities (float16 ends at 65504)."""
    overflow = torch.isinf(stored) & torch.isfinite(tensor)
    if bool(overflow.any()):
        largest = float(tensor[overflow].abs().max())
        raise ExportError(
            f"tensor {name!r} holds {largest:.4g}, beyond the range of {str(stored.dtype).removeprefix('torch.')}; "
            "use --values-dtype bf16 or keep the model's dtype"
        )


def encode_sparse(
    state: dict[str, Tensor], *, values_dtype: torch.dtype | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Encode a state_dict into its logical parts: the tensors and metadata of a version 1/2 file.

    One key per part (``{name}``, ``{name}::values``, ``{name}::mask`` / ``::indices``); :func:`pack_v3` packs
    them into the compact version-3 layout that :func:`save_sparse` writes.

    Args:
        state: the state_dict; tensors may live on any device and share storage.
        values_dtype: ``torch.float16`` or ``torch.bfloat16`` to store wider float tensors rounded to it
            (format version 2); ``None`` stores every tensor in its own dtype (version 1).

    Raises:
        ExportError: a key contains ``::``, a tensor has a dtype the format does not store, or a value
            overflows ``values_dtype``.
    """
    _check_values_dtype(values_dtype)
    stored: dict[str, Tensor] = {}
    table: dict[str, dict[str, object]] = {}
    narrowed = False
    for name, tensor in state.items():
        if KEY_SEPARATOR in name:
            raise ExportError(
                f"state_dict key {name!r} contains {KEY_SEPARATOR!r}, which the sparse format reserves; rename the key"
            )
        dtype_name = str(tensor.dtype).removeprefix("torch.")
        if dtype_name not in _DTYPES:
            raise ExportError(
                f"tensor {name!r} has dtype {dtype_name!r}, which the sparse format does not store; "
                f"convert it to one of {sorted(_DTYPES)}"
            )
        source = tensor.detach().cpu()
        entry: dict[str, object] = {"encoding": "", "shape": list(tensor.shape), "dtype": dtype_name}
        if _narrows(source.dtype, values_dtype):
            assert values_dtype is not None
            narrow = source.to(values_dtype)
            _check_range(name, source, narrow)
            source, narrowed = narrow, True
            entry["values_dtype"] = str(values_dtype).removeprefix("torch.")
        encoding, parts = _encode_tensor(source)
        entry["encoding"] = encoding
        table[name] = entry
        for suffix, part in parts.items():
            stored[name + suffix] = part
    version = "2" if narrowed else "1"
    # Compact separators: the table is stored JSON-escaped in the header, once per tensor, so spaces add up.
    metadata = {"format": FORMAT_NAME, "version": version, "tensors": json.dumps(table, separators=(",", ":"))}
    return stored, metadata


def encoding_costs(numel: int, nnz: int, item: int) -> dict[str, int]:
    """Payload bytes of each encoding for ``numel`` elements of ``item`` bytes, ``nnz`` of them non-zero.

    Without the header entry a sparse encoding adds; see ``docs/sparse-safetensors.md``.
    """
    index_item = 4 if numel < _INT32_LIMIT else 8
    return {
        "dense": numel * item,
        "bitmask": nnz * item + math.ceil(numel / 8),
        "indices": nnz * (item + index_item),
    }


def _encode_tensor(tensor: Tensor) -> tuple[str, dict[str, Tensor]]:
    if tensor.dtype not in _SPARSE_DTYPES or tensor.numel() == 0:
        return "dense", {"": tensor.clone(memory_format=torch.contiguous_format)}
    flat = canonicalize_zeros(tensor).reshape(-1)
    nonzero = flat.view(_SPARSE_DTYPES[tensor.dtype]) != 0
    numel, nnz = flat.numel(), int(nonzero.sum())
    index_dtype = torch.int32 if numel < _INT32_LIMIT else torch.int64
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


def decode_sparse(tensors: dict[str, Tensor], metadata: dict[str, str]) -> dict[str, Tensor]:
    """Decode the tensors and metadata of a sparse file back into the state_dict, validating everything.

    Raises:
        ExportError: the metadata or the tensors are malformed or inconsistent.
    """
    header = {key: (tuple(t.shape), t.dtype) for key, t in tensors.items()}
    if _check_format(metadata) == "3":
        unpacked = _unpack_v3(metadata, header)
        table, layout = unpacked.table, unpacked.layout
        _check_layout(table, layout)
        _check_total_size(table, _physical_memory())
        tensors = _v3_parts(unpacked, dict(tensors))
    else:
        table = _parse_metadata(metadata)
        _check_layout(table, header)
        _check_total_size(table, _physical_memory())
    return {name: _decode_tensor(name, entry, tensors) for name, entry in table.items()}


@dataclass(frozen=True)
class _Entry:
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


def _corrupt(name: str, problem: str) -> ExportError:
    return ExportError(f"sparse file entry {name!r}: {problem}; the file is corrupt, re-export it")


def _parse_metadata(metadata: dict[str, str] | None) -> dict[str, _Entry]:
    """The table of a version 1/2 file (logical parts)."""
    version = _check_format(metadata)
    assert metadata is not None
    if version == "3":
        raise ExportError("a version-3 sparse table needs the file's header; use load_sparse or unpack it first")
    try:
        table = json.loads(metadata.get("tensors", ""))
    except json.JSONDecodeError as exc:
        raise ExportError(f"sparse file metadata 'tensors' is not valid JSON ({exc}); re-export the file") from exc
    if not isinstance(table, dict):
        raise ExportError(f"sparse file metadata 'tensors' is {type(table).__name__!r}, expected an object")
    return {name: _parse_entry(name, raw, version) for name, raw in table.items()}


def _check_format(metadata: dict[str, str] | None) -> str:
    """The format version of a sparse file's metadata, after checking it is ours and readable."""
    found = (metadata or {}).get("format")
    if found != FORMAT_NAME:
        raise ExportError(
            f"not an adapmtl sparse file (format {found!r}, expected {FORMAT_NAME!r}); load it with safetensors instead"
        )
    assert metadata is not None
    version = metadata.get("version")
    if version not in READ_VERSIONS:
        raise ExportError(
            f"unknown sparse format version {version!r} (this adapmtl reads {list(READ_VERSIONS)!r}); "
            "upgrade adapmtl or re-export the file"
        )
    return version


_FIELDS = {"encoding", "shape", "dtype"}


def _parse_entry(name: str, raw: object, version: str) -> _Entry:
    allowed = [_FIELDS] if version == "1" else [_FIELDS, _FIELDS | {"values_dtype"}]
    if not isinstance(raw, dict) or set(raw) not in allowed:
        fields = "'encoding', 'shape' and 'dtype'" + ("" if version == "1" else " (and optionally 'values_dtype')")
        raise _corrupt(name, f"entry {raw!r} must have exactly {fields}")
    encoding, shape, dtype = raw["encoding"], raw["shape"], raw["dtype"]
    if encoding not in ("dense", "bitmask", "indices"):
        raise _corrupt(name, f"unknown encoding {encoding!r}")
    if dtype not in _DTYPES:
        raise _corrupt(name, f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(size) is int and size >= 0 for size in shape):
        raise _corrupt(name, f"shape {shape!r} is not a list of non-negative integers")
    if math.prod(shape) >= 2**62:
        raise _corrupt(name, f"shape {shape!r} is impossibly large")
    if encoding != "dense" and _DTYPES[dtype] not in _SPARSE_DTYPES:
        raise _corrupt(name, f"dtype {dtype!r} cannot use encoding {encoding!r}")
    values_dtype = _DTYPES[dtype]
    if "values_dtype" in raw:
        narrow = raw["values_dtype"]
        allowed_names = [str(d).removeprefix("torch.") for d in VALUES_DTYPES.values()]
        if narrow not in allowed_names or not _narrows(_DTYPES[dtype], _DTYPES[narrow]):
            raise _corrupt(name, f"values_dtype {narrow!r} does not narrow dtype {dtype!r}")
        values_dtype = _DTYPES[narrow]
    return _Entry(encoding, tuple(shape), _DTYPES[dtype], values_dtype)


_Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def _check_layout(table: dict[str, _Entry], stored: _Layout) -> None:
    """Check stored keys, shapes and dtypes against the metadata, before any data is read or allocated."""
    expected = {key for name, entry in table.items() for key in entry.keys(name)}
    missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
    if missing or extra:
        raise ExportError(
            f"sparse file keys do not match its metadata (missing {missing[:5]!r}, "
            f"unexpected {extra[:5]!r}); the file is corrupt or truncated, re-export it"
        )
    for name, entry in table.items():
        problem = _layout_problem(name, entry, stored)
        if problem is not None:
            raise _corrupt(name, problem)


def _layout_problem(name: str, entry: _Entry, stored: _Layout) -> str | None:
    if entry.encoding == "dense":
        shape, dtype = stored[name]
        if shape != entry.shape or dtype != entry.values_dtype:
            return f"stored as {list(shape)!r} {dtype}, declared {list(entry.shape)!r} {entry.values_dtype}"
        return None
    values_shape, values_dtype = stored[name + "::values"]
    if len(values_shape) != 1 or values_dtype != entry.values_dtype:
        return f"values are {list(values_shape)!r} {values_dtype}, expected one dimension of {entry.values_dtype}"
    if values_shape[0] > entry.numel:
        return f"{values_shape[0]} values for a tensor of {entry.numel} elements"
    if entry.encoding == "bitmask":
        mask_shape, mask_dtype = stored[name + "::mask"]
        mask_bytes = math.ceil(entry.numel / 8)
        if mask_shape != (mask_bytes,) or mask_dtype != torch.uint8:
            return f"mask is {list(mask_shape)!r} {mask_dtype}, expected [{mask_bytes}] uint8"
        return None
    index_shape, index_dtype = stored[name + "::indices"]
    wanted = torch.int32 if entry.numel < _INT32_LIMIT else torch.int64
    if index_shape != values_shape or index_dtype != wanted:
        return f"indices are {list(index_shape)!r} {index_dtype}, expected {list(values_shape)!r} {wanted}"
    return None


def _decode_tensor(name: str, entry: _Entry, tensors: dict[str, Tensor]) -> Tensor:
    if entry.encoding == "dense":
        return canonicalize_zeros(tensors[name]).to(entry.dtype)
    values, numel = tensors[name + "::values"], entry.numel
    bits = values.view(_SPARSE_DTYPES[entry.values_dtype])
    if bool(((bits == 0) | (bits == torch.iinfo(bits.dtype).min)).any()):
        raise _corrupt(name, "stored values contain zeros")
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
        raise _corrupt(name, "mask has bits set past the last element")
    mask = torch.from_numpy(np.unpackbits(array, count=numel).view(np.bool_))
    marked = int(mask.sum())
    if marked != count:
        raise _corrupt(name, f"mask marks {marked} elements but {count} values are stored")
    return mask


def _index_positions(name: str, indices: Tensor, numel: int) -> Tensor:
    positions = indices.long()
    if positions.numel() and (int(positions[0]) < 0 or int(positions[-1]) >= numel):
        raise _corrupt(name, f"indices run from {int(positions[0])} to {int(positions[-1])}, outside [0, {numel})")
    if positions.numel() > 1 and not bool((positions[1:] > positions[:-1]).all()):
        raise _corrupt(name, "indices are not strictly increasing")
    return positions


def save_sparse(state: dict[str, Tensor], path: Path, *, values_dtype: torch.dtype | None = None) -> SparseStats:
    """Encode ``state`` and write it to ``path`` atomically (temp file in the same folder, fsync, rename).

    ``values_dtype`` (``torch.float16`` or ``torch.bfloat16``) stores wider float tensors rounded to it; the
    file then decodes to ``cast_state(state, values_dtype)``.

    Raises:
        ExportError: the state cannot be encoded or the file cannot be written.
    """
    stored, metadata = encode_sparse(state, values_dtype=values_dtype)
    packed, packed_metadata = pack_v3(stored, metadata)
    path = Path(path)
    try:
        tmp_name = _create_temp_beside(path)
        try:
            save_file(packed, tmp_name, metadata=packed_metadata)
            with open(tmp_name, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    except OSError as exc:
        raise ExportError(f"cannot write sparse file {str(path)!r} ({exc}); check the folder") from exc
    encodings: dict[str, int] = {}
    theoretical = 0
    for name, entry in json.loads(metadata["tensors"]).items():
        encodings[entry["encoding"]] = encodings.get(entry["encoding"], 0) + 1
        theoretical += _best_payload(name, entry, stored)
    return SparseStats(
        dense_bytes=sum(t.numel() * t.element_size() for t in state.values()),
        sparse_bytes=path.stat().st_size,
        tensors=len(state),
        encodings=encodings,
        payload_bytes=sum(t.numel() * t.element_size() for t in stored.values()),
        theoretical_bytes=theoretical,
        values_dtype=None if values_dtype is None else str(values_dtype).removeprefix("torch."),
    )


def _best_payload(name: str, entry: dict[str, object], stored: dict[str, Tensor]) -> int:
    """The smallest of the three encodings' payloads for one encoded tensor (header entries not counted)."""
    if entry["encoding"] == "dense":
        tensor = stored[name]
        if tensor.dtype not in _SPARSE_DTYPES or tensor.numel() == 0:
            return tensor.numel() * tensor.element_size()
        nnz = int((canonicalize_zeros(tensor).reshape(-1).view(_SPARSE_DTYPES[tensor.dtype]) != 0).sum())
        return min(encoding_costs(tensor.numel(), nnz, tensor.element_size()).values())
    values = stored[name + "::values"]
    numel = math.prod(entry["shape"])  # type: ignore[arg-type]
    return min(encoding_costs(numel, values.numel(), values.element_size()).values())


def _align(offset: int, to: int) -> int:
    return -(-offset // to) * to


def _v3_regions(numel: int, count: int, item: int, encoding: str, offset: int) -> tuple[tuple[int, int], ...]:
    """Byte ranges of one sparse entry's values and mask/indices in the blob, starting at ``offset``."""
    values_end = offset + count * item
    if encoding == "bitmask":
        return (offset, values_end), (values_end, values_end + math.ceil(numel / 8))
    index_item = 4 if numel < _INT32_LIMIT else 8
    start = _align(values_end, index_item)
    return (offset, values_end), (start, start + count * index_item)


def pack_v3(stored: dict[str, Tensor], metadata: dict[str, str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Pack :func:`encode_sparse`'s parts into version 3: dense tensors under their own keys, every sparse
    payload in one ``uint8`` blob (``::sparse``), and a table listing only what the safetensors header does not
    already say. See ``docs/sparse-safetensors.md``."""
    table = json.loads(metadata["tensors"])
    narrow = next((e["values_dtype"] for e in table.values() if "values_dtype" in e), None)
    tensors: dict[str, Tensor] = {}
    compact: dict[str, list[object]] = {}
    pieces: list[np.ndarray] = []
    offset = 0
    for name, entry in table.items():
        if entry["encoding"] == "dense":
            tensors[name] = stored[name]
            compact[name] = ["dense", entry["dtype"]] if "values_dtype" in entry else []
            continue
        values = stored[name + "::values"]
        second = stored[name + ("::mask" if entry["encoding"] == "bitmask" else "::indices")]
        start = _align(offset, 8)
        numel = math.prod(entry["shape"])
        regions = _v3_regions(numel, values.numel(), values.element_size(), entry["encoding"], start)
        pieces.append(np.zeros(start - offset, np.uint8))
        pieces.append(values.contiguous().view(torch.uint8).numpy())
        pieces.append(np.zeros(regions[1][0] - regions[0][1], np.uint8))
        pieces.append(second.contiguous().view(torch.uint8).numpy())
        offset = regions[1][1]
        compact[name] = [entry["encoding"], entry["dtype"], entry["shape"], start, values.numel()]
    if pieces:
        tensors[BLOB_KEY] = torch.from_numpy(np.concatenate(pieces))
    packed = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tensors": json.dumps(compact, separators=(",", ":"))}
    if narrow is not None:
        packed["values_dtype"] = narrow
    return tensors, packed


@dataclass(frozen=True)
class _Unpacked:
    """A version-3 file seen as its logical version-2 parts: the table, the layout, and where parts lie."""

    table: dict[str, _Entry]
    layout: _Layout
    regions: dict[str, tuple[int, int]]  # logical part key -> byte range in the blob


def _unpack_v3(metadata: dict[str, str], header: _Layout) -> _Unpacked:
    """Validate a version-3 table against the safetensors header alone and describe its logical parts."""
    narrow = metadata.get("values_dtype")
    if narrow is not None and narrow not in [str(d).removeprefix("torch.") for d in VALUES_DTYPES.values()]:
        raise ExportError(f"sparse file values_dtype {narrow!r} is not float16 or bfloat16; re-export the file")
    try:
        compact = json.loads(metadata.get("tensors", ""))
    except json.JSONDecodeError as exc:
        raise ExportError(f"sparse file metadata 'tensors' is not valid JSON ({exc}); re-export the file") from exc
    if not isinstance(compact, dict):
        raise ExportError(f"sparse file metadata 'tensors' is {type(compact).__name__!r}, expected an object")
    blob_shape, blob_dtype = header.get(BLOB_KEY, ((0,), torch.uint8))
    if len(blob_shape) != 1 or blob_dtype != torch.uint8:
        raise _corrupt(BLOB_KEY, f"blob is {list(blob_shape)!r} {blob_dtype}, expected one dimension of uint8")
    extra = sorted(set(header) - set(compact) - {BLOB_KEY})
    if extra:
        raise ExportError(f"sparse file holds tensors its table does not list ({extra[:5]!r}); re-export it")
    logical: dict[str, object] = {}
    layout: _Layout = {}
    regions: dict[str, tuple[int, int]] = {}
    end = 0
    for name, raw in compact.items():
        if not isinstance(raw, list):
            raise _corrupt(name, f"table entry {raw!r} is not a list")
        if not raw or raw[0] == "dense":
            if name not in header or len(raw) not in (0, 2):
                raise _corrupt(name, f"dense entry {raw!r} needs a stored tensor and at most its original dtype")
            shape, dtype = header[name]
            entry: dict[str, object] = {"encoding": "dense", "shape": list(shape), "dtype": _name(dtype)}
            if raw:
                entry.update(dtype=raw[1], values_dtype=narrow)
            logical[name] = entry
            layout[name] = (shape, dtype)
            continue
        if len(raw) != 5 or raw[0] not in ("bitmask", "indices"):
            raise _corrupt(name, f"table entry {raw!r} must be [encoding, dtype, shape, offset, count]")
        encoding, dtype_name, shape, offset, count = raw
        entry = {"encoding": encoding, "shape": shape, "dtype": dtype_name}
        if narrow is not None and dtype_name in _DTYPES and _narrows(_DTYPES[dtype_name], _DTYPES[narrow]):
            entry["values_dtype"] = narrow
        parsed = _parse_entry(name, entry, "2")
        if type(offset) is not int or type(count) is not int or offset < end or offset % 8 or count < 0:
            raise _corrupt(name, f"offset {offset!r} / count {count!r} overlap the previous entry or are misaligned")
        if count > parsed.numel:
            raise _corrupt(name, f"{count} values for a tensor of {parsed.numel} elements")
        logical[name] = entry
        values, second = _v3_regions(parsed.numel, count, parsed.values_dtype.itemsize, encoding, offset)
        if second[1] > blob_shape[0]:
            raise _corrupt(name, f"its bytes {offset}..{second[1]} run past the blob's {blob_shape[0]}")
        wide = parsed.numel >= _INT32_LIMIT
        other, part_dtype = ("::mask", torch.uint8) if encoding == "bitmask" else ("::indices", torch.int32)
        if encoding == "indices" and wide:
            part_dtype = torch.int64
        layout[name + "::values"] = ((count,), parsed.values_dtype)
        layout[name + other] = (((second[1] - second[0]) // part_dtype.itemsize,), part_dtype)
        regions[name + "::values"], regions[name + other] = values, second
        end = second[1]
    if end != blob_shape[0]:
        raise _corrupt(BLOB_KEY, f"blob holds {blob_shape[0]} bytes but the table accounts for {end}")
    table = {name: _parse_entry(name, raw, "2") for name, raw in logical.items()}
    return _Unpacked(table, layout, regions)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _v3_parts(unpacked: _Unpacked, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The logical parts of a version-3 file: dense tensors as read, sparse parts as views into the blob."""
    blob = tensors.pop(BLOB_KEY, torch.zeros(0, dtype=torch.uint8))
    parts = dict(tensors)
    for key, (start, stop) in unpacked.regions.items():
        parts[key] = blob[start:stop].view(unpacked.layout[key][1])
    return parts


def load_sparse(path: Path, *, max_bytes: int | None = None) -> dict[str, Tensor]:
    """Read and validate a sparse file written by :func:`save_sparse`; return the dense state_dict.

    The header is checked against the metadata before any tensor is read, and the total decoded size is capped
    (by default at the machine's physical memory) so a crafted header cannot trigger a huge allocation.

    Raises:
        ExportError: the file is missing, not a sparse file, of an unknown version, or corrupt.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            header: _Layout = {}
            for key in handle.keys():
                piece = handle.get_slice(key)
                header[key] = (tuple(piece.get_shape()), _stored_dtype(key, piece.get_dtype()))
            unpacked = None
            if _check_format(metadata) == "3":
                unpacked = _unpack_v3(metadata, header)
                table, layout = unpacked.table, unpacked.layout
            else:
                table, layout = _parse_metadata(metadata), header
            _check_layout(table, layout)
            _check_total_size(table, _physical_memory() if max_bytes is None else max_bytes)
            tensors = {key: handle.get_tensor(key) for key in header}
    except (OSError, SafetensorError) as exc:
        raise ExportError(f"cannot read sparse file {str(path)!r} ({exc}); check the path") from exc
    if unpacked is not None:
        tensors = _v3_parts(unpacked, tensors)
    return {name: _decode_tensor(name, entry, tensors) for name, entry in table.items()}


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _stored_dtype(key: str, name: str) -> torch.dtype:
    if name not in _SAFETENSORS_DTYPES:
        raise ExportError(f"sparse file tensor {key!r} has dtype {name!r}, which the format never writes")
    return _SAFETENSORS_DTYPES[name]


def _check_total_size(table: dict[str, _Entry], max_bytes: int) -> None:
    total = sum(entry.numel * entry.dtype.itemsize for entry in table.values())
    if total > max_bytes:
        raise ExportError(
            f"sparse file declares {total} bytes of tensors, more than the limit of {max_bytes}; "
            "the file is corrupt or crafted (pass max_bytes to raise the limit)"
        )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def _create_temp_beside(path: Path) -> str:
    # Not tempfile.mkstemp: its 0600 mode would stick to the final file; os.open honours the umask.
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp

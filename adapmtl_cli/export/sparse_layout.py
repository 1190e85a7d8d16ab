"""The sparse file's table and layout: version 1/2 logical parts and the packed version-3 blob.

Versions 1 and 2 store one safetensors entry per part (``{name}``, ``{name}::values``, ``{name}::mask`` /
``::indices``) and a JSON table of every tensor's encoding, shape and dtype. Version 3, the one written, keeps
dense tensors under their own keys and packs every sparse payload into one aligned ``uint8`` blob with a
compact table. Everything here is checked against the safetensors header alone, before any tensor data is
read or allocated. The spec is ``docs/sparse-safetensors.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.sparse_tensor import (
    FORMAT_DTYPES,
    INT32_LIMIT,
    SPARSE_DTYPES,
    VALUES_DTYPES,
    SparseEntry,
    corrupt_entry,
    narrows,
)
from adapmtl_cli.files.reading import json_kind, parse_json

FORMAT_NAME = "adapmtl-sparse"
FORMAT_VERSION = "3"
"""The version :func:`save_sparse` writes: every sparse payload packed into one byte blob, a compact table."""
READ_VERSIONS = ("1", "2", "3")
KEY_SEPARATOR = "::"
BLOB_KEY = "::sparse"
"""The version-3 byte blob's key; state_dict keys cannot collide with it since they may not contain ``::``."""


def parse_metadata(metadata: dict[str, str] | None) -> dict[str, SparseEntry]:
    """The table of a version 1/2 file (logical parts)."""
    version = check_format(metadata)
    assert metadata is not None
    if version == "3":
        raise ExportError("a version-3 sparse table needs the file's header; use load_sparse or unpack it first")
    table = _table(metadata)
    return {name: parse_entry(name, raw, version) for name, raw in table.items()}


def _table(metadata: dict[str, str]) -> dict[str, Any]:
    """The parsed ``tensors`` table: a JSON object (nested at most ``MAX_JSON_DEPTH`` levels) whose keys are
    state_dict keys, which may not contain ``::`` (the separator of stored parts, and the blob's key)."""
    table = parse_json(metadata.get("tensors", ""), ExportError, "sparse file metadata 'tensors'", "re-export the file")
    if not isinstance(table, dict):
        raise ExportError(f"sparse file metadata 'tensors' is a JSON {json_kind(table)}, expected an object")
    reserved = [name for name in table if KEY_SEPARATOR in name]
    if reserved:
        raise corrupt_entry(reserved[0], f"the key contains {KEY_SEPARATOR!r}, which the format reserves")
    return table


def check_format(metadata: dict[str, str] | None) -> str:
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


def parse_entry(name: str, raw: object, version: str) -> SparseEntry:
    allowed = [_FIELDS] if version == "1" else [_FIELDS, _FIELDS | {"values_dtype"}]
    if not isinstance(raw, dict) or set(raw) not in allowed:
        fields = "'encoding', 'shape' and 'dtype'" + ("" if version == "1" else " (and optionally 'values_dtype')")
        raise corrupt_entry(name, f"entry {_shown(raw)} must have exactly {fields}")
    encoding, shape, dtype = raw["encoding"], raw["shape"], raw["dtype"]
    if not isinstance(encoding, str) or encoding not in ("dense", "bitmask", "indices"):
        raise corrupt_entry(name, f"unknown encoding {_shown(encoding)}")
    if not isinstance(dtype, str) or dtype not in FORMAT_DTYPES:
        raise corrupt_entry(name, f"unknown dtype {_shown(dtype)}")
    if not isinstance(shape, list) or not all(type(size) is int and size >= 0 for size in shape):
        raise corrupt_entry(name, f"shape {_shown(shape)} is not a list of non-negative integers")
    if math.prod(shape) >= 2**62:
        raise corrupt_entry(name, f"shape {shape!r} is impossibly large")
    if encoding != "dense" and FORMAT_DTYPES[dtype] not in SPARSE_DTYPES:
        raise corrupt_entry(name, f"dtype {dtype!r} cannot use encoding {encoding!r}")
    values_dtype = FORMAT_DTYPES[dtype]
    if "values_dtype" in raw:
        narrow = raw["values_dtype"]
        allowed_names = [str(d).removeprefix("torch.") for d in VALUES_DTYPES.values()]
        if narrow not in allowed_names or not narrows(FORMAT_DTYPES[dtype], FORMAT_DTYPES[narrow]):
            raise corrupt_entry(name, f"values_dtype {_shown(narrow)} does not narrow dtype {dtype!r}")
        values_dtype = FORMAT_DTYPES[narrow]
    return SparseEntry(encoding, tuple(shape), FORMAT_DTYPES[dtype], values_dtype)


def _shown(value: object) -> str:
    """A table value for a message, cut short (a crafted file may hold megabytes in one slot)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]
"""Stored key -> (shape, dtype), as a safetensors header lists them (or as a version-3 table implies them)."""


def check_layout(table: dict[str, SparseEntry], stored: Layout) -> None:
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
            raise corrupt_entry(name, problem)


def _layout_problem(name: str, entry: SparseEntry, stored: Layout) -> str | None:
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
    wanted = torch.int32 if entry.numel < INT32_LIMIT else torch.int64
    if index_shape != values_shape or index_dtype != wanted:
        return f"indices are {list(index_shape)!r} {index_dtype}, expected {list(values_shape)!r} {wanted}"
    return None


def _align(offset: int, to: int) -> int:
    return -(-offset // to) * to


def _v3_regions(numel: int, count: int, item: int, encoding: str, offset: int) -> tuple[tuple[int, int], ...]:
    """Byte ranges of one sparse entry's values and mask/indices in the blob, starting at ``offset``."""
    values_end = offset + count * item
    if encoding == "bitmask":
        return (offset, values_end), (values_end, values_end + math.ceil(numel / 8))
    index_item = 4 if numel < INT32_LIMIT else 8
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
class UnpackedV3:
    """A version-3 file seen as its logical version-2 parts: the table, the layout, and where parts lie."""

    table: dict[str, SparseEntry]
    layout: Layout
    regions: dict[str, tuple[int, int]]  # logical part key -> byte range in the blob


def unpack_v3(metadata: dict[str, str], header: Layout) -> UnpackedV3:
    """Validate a version-3 table against the safetensors header alone and describe its logical parts."""
    narrow, compact = _compact_table(metadata)
    blob_bytes = _blob_bytes(header, compact)
    logical: dict[str, dict[str, object]] = {}
    layout: Layout = {}
    regions: dict[str, tuple[int, int]] = {}
    end = 0
    for name, raw in compact.items():
        if not isinstance(raw, list):
            raise corrupt_entry(name, f"table entry {_shown(raw)} is not a list")
        if not raw or raw[0] == "dense":
            logical[name], layout[name] = _dense_entry(name, raw, header, narrow)
            continue
        logical[name], parts, end = _sparse_entry(name, raw, narrow, end, blob_bytes)
        for key, (shape_dtype, region) in parts.items():
            layout[key], regions[key] = shape_dtype, region
    if end != blob_bytes:
        raise corrupt_entry(BLOB_KEY, f"blob holds {blob_bytes} bytes but the table accounts for {end}")
    table = {name: parse_entry(name, raw, "2") for name, raw in logical.items()}
    return UnpackedV3(table, layout, regions)


def _compact_table(metadata: dict[str, str]) -> tuple[str | None, dict[str, object]]:
    """The file-wide narrow values dtype (if any) and the compact table of a version-3 file, parsed."""
    narrow = metadata.get("values_dtype")
    if narrow is not None and narrow not in [str(d).removeprefix("torch.") for d in VALUES_DTYPES.values()]:
        raise ExportError(f"sparse file values_dtype {_shown(narrow)} is not float16 or bfloat16; re-export the file")
    return narrow, _table(metadata)


def _blob_bytes(header: Layout, compact: dict[str, object]) -> int:
    """The blob's length, after checking it is flat ``uint8`` and that the table lists every other tensor."""
    blob_shape, blob_dtype = header.get(BLOB_KEY, ((0,), torch.uint8))
    if len(blob_shape) != 1 or blob_dtype != torch.uint8:
        raise corrupt_entry(BLOB_KEY, f"blob is {list(blob_shape)!r} {blob_dtype}, expected one dimension of uint8")
    extra = sorted(set(header) - set(compact) - {BLOB_KEY})
    if extra:
        raise ExportError(f"sparse file holds tensors its table does not list ({extra[:5]!r}); re-export it")
    return blob_shape[0]


def _dense_entry(
    name: str, raw: list[Any], header: Layout, narrow: str | None
) -> tuple[dict[str, object], tuple[tuple[int, ...], torch.dtype]]:
    """A dense entry (``[]``, or ``["dense", original dtype]`` when narrowed) as a logical entry and its layout."""
    if name not in header or len(raw) not in (0, 2):
        raise corrupt_entry(name, f"dense entry {_shown(raw)} needs a stored tensor and at most its original dtype")
    shape, dtype = header[name]
    entry: dict[str, object] = {"encoding": "dense", "shape": list(shape), "dtype": _name(dtype)}
    if raw:
        entry.update(dtype=raw[1], values_dtype=narrow)
    return entry, (shape, dtype)


_Part = tuple[tuple[tuple[int, ...], torch.dtype], tuple[int, int]]
"""One logical part of a sparse entry: its (shape, dtype) and its byte range in the blob."""


def _sparse_entry(
    name: str, raw: list[Any], narrow: str | None, end: int, blob_bytes: int
) -> tuple[dict[str, object], dict[str, _Part], int]:
    """A ``[encoding, dtype, shape, offset, count]`` entry starting at or after ``end``: the logical entry, its
    two parts, and where it ends in the blob."""
    if len(raw) != 5 or raw[0] not in ("bitmask", "indices"):
        raise corrupt_entry(name, f"table entry {_shown(raw)} must be [encoding, dtype, shape, offset, count]")
    encoding, dtype_name, shape, offset, count = raw
    entry: dict[str, object] = {"encoding": encoding, "shape": shape, "dtype": dtype_name}
    known = isinstance(dtype_name, str) and dtype_name in FORMAT_DTYPES
    if narrow is not None and known and narrows(FORMAT_DTYPES[dtype_name], FORMAT_DTYPES[narrow]):
        entry["values_dtype"] = narrow
    parsed = parse_entry(name, entry, "2")
    if type(offset) is not int or type(count) is not int or offset < end or offset % 8 or count < 0:
        raise corrupt_entry(
            name, f"offset {_shown(offset)} / count {_shown(count)} overlap the previous entry or are misaligned"
        )
    if count > parsed.numel:
        raise corrupt_entry(name, f"{count} values for a tensor of {parsed.numel} elements")
    values, second = _v3_regions(parsed.numel, count, parsed.values_dtype.itemsize, encoding, offset)
    if second[1] > blob_bytes:
        raise corrupt_entry(name, f"its bytes {offset}..{second[1]} run past the blob's {blob_bytes}")
    other, part_dtype = ("::mask", torch.uint8) if encoding == "bitmask" else ("::indices", torch.int32)
    if encoding == "indices" and parsed.numel >= INT32_LIMIT:
        part_dtype = torch.int64
    parts: dict[str, _Part] = {
        name + "::values": (((count,), parsed.values_dtype), values),
        name + other: ((((second[1] - second[0]) // part_dtype.itemsize,), part_dtype), second),
    }
    return entry, parts, second[1]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def v3_parts(unpacked: UnpackedV3, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The logical parts of a version-3 file: dense tensors as read, sparse parts as views into the blob."""
    blob = tensors.pop(BLOB_KEY, torch.zeros(0, dtype=torch.uint8))
    parts = dict(tensors)
    for key, (start, stop) in unpacked.regions.items():
        parts[key] = blob[start:stop].view(unpacked.layout[key][1])
    return parts

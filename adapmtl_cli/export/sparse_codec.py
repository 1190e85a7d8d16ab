"""Sparse safetensors files: a state_dict encoded, written atomically, read back and verified bit for bit.

:func:`save_sparse` encodes each tensor with ``sparse_tensor``, packs the parts into format version 3 with
``sparse_layout`` and writes the file through ``files/atomic.py`` (temp file in the same folder, fsync,
rename); :func:`load_sparse` reads versions 1 to 3, validating the header before any tensor is read and
capping the decoded size. The file stays an ordinary safetensors file (shapes, dtypes and encodings live in
its metadata). The spec is ``docs/sparse-safetensors.md``.

The cap (:func:`decode_limit`) is bounded by what the file stores, not by the machine: a sparse file decodes to
at most :data:`DECODE_RATIO` times the bytes of its stored tensors (a density of 1/2048 for float32 values with
int32 indices), or :data:`DECODE_FLOOR` bytes for small files, and never more than the physical memory.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.sparse_layout import (
    FORMAT_NAME,
    KEY_SEPARATOR,
    Layout,
    check_format,
    check_layout,
    pack_v3,
    parse_metadata,
    unpack_v3,
    v3_parts,
)
from adapmtl_cli.export.sparse_tensor import (
    FORMAT_DTYPES,
    SPARSE_DTYPES,
    SparseEntry,
    canonicalize_zeros,
    cast_state,
    check_range,
    check_values_dtype,
    decode_tensor,
    encode_tensor,
    encoding_costs,
    narrows,
)
from adapmtl_cli.files.atomic import atomic_write, export_write_error
from adapmtl_cli.files.reading import check_regular_file

_WRITE_ERROR = export_write_error("sparse file", "check the folder")

DECODE_RATIO = 1024
"""A sparse file decodes to at most this many times the bytes it stores (``max_bytes=`` overrides)."""
DECODE_FLOOR = 256 * 2**20
"""Whatever it stores, a sparse file may decode to this many bytes (256 MiB)."""


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
    check_values_dtype(values_dtype)
    stored: dict[str, Tensor] = {}
    table: dict[str, dict[str, object]] = {}
    narrowed = False
    for name, tensor in state.items():
        if KEY_SEPARATOR in name:
            raise ExportError(
                f"state_dict key {name!r} contains {KEY_SEPARATOR!r}, which the sparse format reserves; rename the key"
            )
        dtype_name = str(tensor.dtype).removeprefix("torch.")
        if dtype_name not in FORMAT_DTYPES:
            raise ExportError(
                f"tensor {name!r} has dtype {dtype_name!r}, which the sparse format does not store; "
                f"convert it to one of {sorted(FORMAT_DTYPES)}"
            )
        source = tensor.detach().cpu()
        entry: dict[str, object] = {"encoding": "", "shape": list(tensor.shape), "dtype": dtype_name}
        if narrows(source.dtype, values_dtype):
            assert values_dtype is not None
            narrow = source.to(values_dtype)
            check_range(name, source, narrow)
            source, narrowed = narrow, True
            entry["values_dtype"] = str(values_dtype).removeprefix("torch.")
        encoding, parts = encode_tensor(source)
        entry["encoding"] = encoding
        table[name] = entry
        for suffix, part in parts.items():
            stored[name + suffix] = part
    version = "2" if narrowed else "1"
    # Compact separators: the table is stored JSON-escaped in the header, once per tensor, so spaces add up.
    metadata = {"format": FORMAT_NAME, "version": version, "tensors": json.dumps(table, separators=(",", ":"))}
    return stored, metadata


def decode_sparse(
    tensors: dict[str, Tensor], metadata: dict[str, str], *, max_bytes: int | None = None
) -> dict[str, Tensor]:
    """Decode the tensors and metadata of a sparse file back into the state_dict, validating everything.

    The decoded size is capped as in :func:`load_sparse` (``max_bytes`` overrides :func:`decode_limit`).

    Raises:
        ExportError: the metadata or the tensors are malformed or inconsistent.
    """
    header = {key: (tuple(t.shape), t.dtype) for key, t in tensors.items()}
    if check_format(metadata) == "3":
        unpacked = unpack_v3(metadata, header)
        table, layout = unpacked.table, unpacked.layout
        check_layout(table, layout)
        _check_total_size(table, decode_limit(header, max_bytes), "sparse tensors")
        tensors = v3_parts(unpacked, dict(tensors))
    else:
        table = parse_metadata(metadata)
        check_layout(table, header)
        _check_total_size(table, decode_limit(header, max_bytes), "sparse tensors")
    return {name: decode_tensor(name, entry, tensors) for name, entry in table.items()}


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
    atomic_write(
        path, lambda tmp: save_file(packed, str(tmp), metadata=packed_metadata), error=_WRITE_ERROR, parents=False
    )
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
        if tensor.dtype not in SPARSE_DTYPES or tensor.numel() == 0:
            return tensor.numel() * tensor.element_size()
        nnz = int((canonicalize_zeros(tensor).reshape(-1).view(SPARSE_DTYPES[tensor.dtype]) != 0).sum())
        return min(encoding_costs(tensor.numel(), nnz, tensor.element_size()).values())
    values = stored[name + "::values"]
    numel = math.prod(cast("list[int]", entry["shape"]))  # encode_sparse wrote it as list(tensor.shape)
    return min(encoding_costs(numel, values.numel(), values.element_size()).values())


def load_sparse(path: Path, *, max_bytes: int | None = None) -> dict[str, Tensor]:
    """Read and validate a sparse file written by :func:`save_sparse`; return the dense state_dict.

    The header is checked against the metadata before any tensor is read, and the total decoded size is capped
    so a crafted header cannot trigger a huge allocation: by default at :func:`decode_limit` of what the file
    stores; ``max_bytes`` sets another cap (for a file known to be sparser than 1 in 2048).

    Raises:
        ExportError: the file is missing, not a sparse file, of an unknown version, corrupt, or decodes to more
            than the cap.
    """
    check_regular_file(Path(path), ExportError, "sparse file", "check the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            header: Layout = {}
            for key in handle.keys():
                piece = handle.get_slice(key)
                header[key] = (tuple(piece.get_shape()), _stored_dtype(key, piece.get_dtype()))
            unpacked = None
            if check_format(metadata) == "3":
                unpacked = unpack_v3(metadata, header)
                table, layout = unpacked.table, unpacked.layout
            else:
                table, layout = parse_metadata(metadata), header
            check_layout(table, layout)
            _check_total_size(table, decode_limit(header, max_bytes), f"sparse file {str(path)!r}")
            tensors = {key: handle.get_tensor(key) for key in header}
    except (OSError, SafetensorError) as exc:
        raise ExportError(f"cannot read sparse file {str(path)!r} ({exc}); check the path") from exc
    if unpacked is not None:
        tensors = v3_parts(unpacked, tensors)
    return {name: decode_tensor(name, entry, tensors) for name, entry in table.items()}


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


def decode_limit(header: Layout, max_bytes: int | None = None) -> int:
    """The most bytes a sparse file with these stored tensors may decode to (``max_bytes``, when given).

    :data:`DECODE_RATIO` times the stored bytes, at least :data:`DECODE_FLOOR`, at most the physical memory.
    """
    if max_bytes is not None:
        return max_bytes
    stored = sum(math.prod(shape) * dtype.itemsize for shape, dtype in header.values())
    return min(_physical_memory(), max(DECODE_FLOOR, DECODE_RATIO * stored))


def _check_total_size(table: dict[str, SparseEntry], max_bytes: int, what: str) -> None:
    total = sum(entry.numel * entry.dtype.itemsize for entry in table.values())
    if total > max_bytes:
        raise ExportError(
            f"{what} would decode to {total} bytes, more than the limit of {max_bytes} ({DECODE_RATIO} times "
            f"what it stores, at least {DECODE_FLOOR // 2**20} MiB); the file is corrupt or crafted, or sparser "
            "than 1 in 2048: if you trust it, pass max_bytes= to load_sparse"
        )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_sparse_roundtrip(
    dense_state: dict[str, Tensor], sparse_path: Path, *, values_dtype: torch.dtype | None = None
) -> None:
    """Check that the sparse file decodes to ``dense_state`` bit for bit (-0.0 read as +0.0).

    With ``values_dtype`` the reference is ``cast_state(dense_state, values_dtype)``: the weights rounded to
    the narrow dtype the file stores, in their own dtype.

    Raises:
        ExportError: keys, dtypes, shapes or any bit differ; the sparse file cannot be read.
    """
    dense_state = cast_state(dense_state, values_dtype)
    # The file must decode to exactly the dense weights, so their size is the cap (a fully pruned model stores
    # almost nothing and would pass no ratio).
    expected = sum(t.numel() * t.element_size() for t in dense_state.values())
    decoded = load_sparse(Path(sparse_path), max_bytes=expected)
    problems = []
    missing, extra = sorted(set(dense_state) - set(decoded)), sorted(set(decoded) - set(dense_state))
    if missing:
        problems.append(f"missing keys {missing[:5]!r}")
    if extra:
        problems.append(f"unexpected keys {extra[:5]!r}")
    for name, tensor in dense_state.items():
        got = decoded.get(name)
        if got is None:
            continue
        if got.dtype != tensor.dtype or got.shape != tensor.shape:
            problems.append(
                f"{name!r} is {got.dtype} {list(got.shape)!r}, expected {tensor.dtype} {list(tensor.shape)!r}"
            )
        elif not torch.equal(_bytes(got), _bytes(canonicalize_zeros(tensor.detach().cpu()))):
            problems.append(f"{name!r} values differ")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ExportError(
            f"sparse file {str(sparse_path)!r} does not match the dense weights: {shown}; "
            "this is a bug, please report it"
        )


def _bytes(tensor: Tensor) -> Tensor:
    return tensor.reshape(-1).contiguous().view(torch.uint8)

"""Dense safetensors files: the deployment export (every key) and the run's weights (each tied tensor once).

``save_dense`` writes the baked model's state_dict with unchanged keys, atomically by ``files/atomic.py`` (temp
file in the same folder, fsync, rename); the folder must exist (``export_run`` creates it), a missing one is an
``ExportError``. Every key holds its own copy, so ``model.load_state_dict(load_file(path), strict=True)`` works
on the user's class even when weights are tied (loading both names into the one tied tensor re-ties nothing:
they are one tensor already, and hold equal values).

safetensors refuses tensors that share memory. ``weights_bytes`` (``prune``'s ``pruned.safetensors``) stores a
tied tensor (several keys viewing the same memory alike) once, under its first key, and lists the other keys in
the ``tied`` metadata entry (JSON ``{alias: kept}``); ``retie_state`` puts the aliases back, as the same tensor,
so a strict load into the user's model restores the tie. Keys that overlap in memory without being the same
view are stored as copies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save, save_file
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.files.atomic import atomic_write, export_write_error

_WRITE_ERROR = export_write_error("dense safetensors file")
TIED_METADATA = "tied"
"""The metadata entry of ``weights_bytes`` files: JSON ``{alias key: kept key}`` of the tied tensors."""


def save_dense(state: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> int:
    """Write ``state`` as a plain safetensors file with unchanged keys; return its size in bytes.

    Tensors are copied to contiguous CPU tensors first, so tied weights (shared storage) are fine: each key
    gets its own copy (see the module docstring).

    Raises:
        ExportError: metadata is not ``str -> str`` or the file cannot be written.
    """
    bad = {
        key: value for key, value in (metadata or {}).items() if not (isinstance(key, str) and isinstance(value, str))
    }
    if bad:
        raise ExportError(f"safetensors metadata must map strings to strings, got {bad!r}; convert the values")
    tensors = {
        name: tensor.detach().cpu().clone(memory_format=torch.contiguous_format) for name, tensor in state.items()
    }
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), error=_WRITE_ERROR, parents=False)
    return path.stat().st_size


def _view(tensor: Tensor) -> tuple[object, ...]:
    return (tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)


def untie_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Each tied tensor once: ``(tensors to store, {alias key: kept key})``, in the order of ``state``.

    A key whose tensor is the same view (storage, offset, shape, strides, dtype) of the same memory as an
    earlier key's becomes an alias of it; one that overlaps an earlier key's memory in another view is copied.
    """
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[object, int], list[tuple[str, Tensor]]] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel() == 0:
            kept[name] = tensor
            continue
        place = (tensor.device, tensor.untyped_storage().data_ptr())
        earlier = seen.setdefault(place, [])
        same = next((key for key, other in earlier if _view(other) == _view(tensor)), None)
        if same is not None:
            aliases[name] = same
            continue
        kept[name] = tensor.clone() if earlier else tensor
        earlier.append((name, tensor))
    return kept, aliases


def weights_bytes(state: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file of ``state`` in memory, each tied tensor stored once (aliases in the metadata)."""
    kept, aliases = untie_state(state)
    tensors = {name: tensor.cpu().contiguous() for name, tensor in kept.items()}
    meta = dict(metadata or {})
    if aliases:
        meta[TIED_METADATA] = json.dumps(aliases, separators=(",", ":"))
    return save(tensors, metadata=meta)


def retie_state(state: Mapping[str, Tensor], metadata: Mapping[str, str] | None, where: str) -> dict[str, Tensor]:
    """``state`` with the aliases of its ``tied`` metadata put back, each as its kept key's very tensor.

    Raises:
        ExportError: the ``tied`` entry is not a JSON object of key names, names a key the file lacks, or an
            alias the file also holds.
    """
    text = (metadata or {}).get(TIED_METADATA)
    out = dict(state)
    if text is None:
        return out
    try:
        aliases = json.loads(text)
    except (ValueError, RecursionError):
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ExportError(f"{where} has a damaged {TIED_METADATA!r} metadata entry; re-run prune to rewrite it")
    for alias, key in aliases.items():
        if key not in state or alias in state:
            problem = f"ties {alias!r} to missing key {key!r}" if key not in state else f"also stores {alias!r}"
            raise ExportError(f"{where} {problem} in its {TIED_METADATA!r} metadata; re-run prune to rewrite it")
        out[alias] = state[key]
    return out


def read_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors file (``pruned.safetensors`` or any plain one) as CPU tensors, its tied aliases put back.

    Raises:
        ExportError: the file is missing, unreadable, damaged or truncated, or its ``tied`` entry is damaged.
    """
    from safetensors import SafetensorError, safe_open

    where = repr(str(path))
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ExportError(f"{where} is not a readable safetensors file ({detail}); re-run prune to rewrite it") from exc
    return retie_state(state, metadata, where)

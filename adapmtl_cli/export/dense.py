"""Dense safetensors export: the baked model's state_dict as a plain safetensors file with unchanged keys.

Written atomically by ``files/atomic.py`` (temp file in the same folder, fsync, rename). The folder must exist
(``export_run`` creates it); a missing one is an ``ExportError``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from adapmtl_cli.errors import ExportError
from adapmtl_cli.files.atomic import atomic_write, export_write_error

_WRITE_ERROR = export_write_error("dense safetensors file")


def save_dense(state: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> int:
    """Write ``state`` as a plain safetensors file with unchanged keys; return its size in bytes.

    Tensors are copied to contiguous CPU tensors first, so tied weights (shared storage) are fine.

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

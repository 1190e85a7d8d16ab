"""Reading ``.npy`` files safely: shape and dtype from the header alone, and loads that refuse pickles and NaN.

Only regular files are opened (``problems.require_regular_file``): a FIFO named ``0.npy`` would block forever.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from adapmtl_cli.data.problems import quoted, require_regular_file
from adapmtl_cli.errors import DataError


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header; also refuses pickled and truncated files.

    A FIFO, socket, device or folder under a ``.npy`` name is refused before it is opened (a FIFO would block).
    """
    require_regular_file(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 only differs by a utf-8 header, which the memory-mapped loader parses for us
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = array.shape, array.dtype
                f.seek(array.offset)
            if dtype.hasobject:
                raise DataError(
                    f"{quoted(path)} holds Python objects (dtype {str(dtype)!r}); unpickling is refused, "
                    "save plain numeric arrays with numpy.save"
                )
            expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
            actual = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, EOFError) as exc:
        msg = f"{quoted(path)} is not a readable .npy file ({exc}); re-save it with numpy.save"
        raise DataError(msg) from None
    if actual < expected:
        raise DataError(f"{quoted(path)} is truncated ({actual} bytes, its header needs {expected}); re-copy it")
    if dtype.kind not in "biuf":
        raise DataError(f"{quoted(path)} has dtype {str(dtype)!r}; expected a numeric array (float or int)")
    return tuple(shape), dtype


def load_npy(path: Path) -> np.ndarray:
    """The array stored in ``path`` (pickles refused), checked to be finite when it is a float array."""
    require_regular_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{quoted(path)} cannot be read ({exc}); re-save it with numpy.save") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{quoted(path)} holds NaN or infinite values; fix or drop this sample")
    return array

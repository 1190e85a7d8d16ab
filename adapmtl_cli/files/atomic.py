"""Atomic file writing (temp file beside the target, fsync, rename, fsync the folder) and the small file helpers.

Every file the package writes goes through :func:`atomic_write` (or, for a set of files built together such as
an ONNX graph and its external data, :func:`temp_folder` plus :func:`move_into_place`), so a crash or a full
disk leaves either the old file or the complete new one, never a partial one, and no temp file behind. A
failed write is one line: a ``ConfigError`` by default, or whatever error the caller's ``error`` builder makes
(export files name an ``ExportError``, see :func:`export_write_error`). Libraries that report a failed write as
their own exception (safetensors' ``SafetensorError``, ``torch.save``'s ``RuntimeError``) are written so that
the operating system's error is what the user sees (:func:`os_error_of`, :func:`torch_save_file`).

The readers (``read_model``, ``read_jsonl``) live in ``files/reading.py``; they are importable from here too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch
from pydantic import BaseModel

from adapmtl_cli.errors import AdapmtlError, ConfigError, ExportError
from adapmtl_cli.files.reading import read_jsonl as read_jsonl
from adapmtl_cli.files.reading import read_model as read_model

WriteError = Callable[[Path, OSError], AdapmtlError]
"""Builds the one-line error for a target that cannot be written, from its path and the ``OSError``."""


def write_error(path: Path, exc: OSError) -> ConfigError:
    """A one-line ``ConfigError`` for a file or folder that cannot be written (read-only, full disk, ...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ConfigError(
        f"cannot write {str(path)!r}: {reason}; check that the folder is writable and the disk has space, "
        "or pass another --out"
    )


def export_write_error(what: str, hint: str = "check the folder and free space") -> WriteError:
    """The error builder for export files: ``ExportError("cannot write WHAT 'PATH' (OS ERROR); HINT")``."""

    def build(path: Path, exc: OSError) -> ExportError:
        return ExportError(f"cannot write {what} {str(path)!r} ({exc}); {hint}")

    return build


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (where a full disk may only show up, on delayed-allocation filesystems)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def create_temp(path: Path, *, parents: bool = True) -> tuple[int, Path]:
    """An open, new, empty ``.NAME.RANDOM.tmp`` next to ``path`` (with ``parents``, missing folders are created).

    Unlike ``mkstemp`` (always 0600) the file gets the usual permissions under the umask, like a plain write.
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(
    path: Path,
    write: Callable[[Path], object],
    *,
    error: WriteError = write_error,
    parents: bool = True,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Call ``write(tmp)`` then move ``tmp`` over ``path``; ``path`` is either old or complete, never partial.

    The temp file is removed whatever happens, an ``OSError`` included. What ``write`` returns is ignored (so
    ``lambda p: p.write_bytes(data)`` fits).

    Args:
        error: builds the error raised when the file cannot be written.
        parents: create missing parent folders; without it a missing folder is a write error.
        before_replace: runs once the temp file is complete and on disk, just before the rename (resume
            states retire the previous file here, so nothing is lost before the new one is whole).

    Raises:
        AdapmtlError: from ``error`` (a ``ConfigError`` by default) when the folder cannot be created or
            written (read-only, full disk, file size limit).
    """
    path = Path(path)
    try:
        fd, tmp = create_temp(path, parents=parents)
    except OSError as exc:
        raise error(path, exc) from exc
    os.close(fd)
    try:
        write(tmp)
        fsync_file(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise error(path, exc) from exc
    except Exception as exc:
        cause = os_error_of(exc)
        if cause is None:
            raise
        raise error(path, cause) from exc
    finally:
        tmp.unlink(missing_ok=True)


_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind a library's write failure: the one it was raised from, or the ``(os error N)``
    that safetensors' Rust writer puts in its message; ``None`` when ``exc`` is not a failed write."""
    if isinstance(exc.__cause__, OSError):
        return exc.__cause__
    found = _OS_ERROR_CODE.search(str(exc))
    if found is None or type(exc).__name__ != "SafetensorError":
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code) if code in errno.errorcode else str(exc))


class _KeepingWriter:
    """A write-only file object for ``torch.save`` that keeps the ``OSError`` of a failed write (and can hash).

    ``torch.save`` reports a failed write as a ``RuntimeError`` from its C++ writer; the original ``OSError``
    (full disk, file size limit) is what the user needs to see.
    """

    def __init__(self, fh: Any, sha: Any = None) -> None:
        self.fh, self.sha = fh, sha
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            n = int(self.fh.write(data))
        except OSError as exc:
            self.error = exc
            raise
        if self.sha is not None:
            self.sha.update(data)
        return n

    def flush(self) -> None:
        self.fh.flush()


def torch_save_file(obj: Any, path: Path, sha: Any = None) -> None:
    """``torch.save(obj, path)``, raising the ``OSError`` of a failed write; ``sha`` is fed what is written.

    Raises:
        OSError: the file cannot be written (``atomic_write`` names it).
    """
    with Path(path).open("wb") as fh:
        writer = _KeepingWriter(fh, sha)
        try:
            torch.save(obj, cast(BinaryIO, writer))  # torch.save calls only write() and flush()
        except RuntimeError as exc:
            if writer.error is not None:
                raise writer.error from exc
            raise
        fh.flush()


@contextlib.contextmanager
def temp_folder(path: Path, *, parents: bool = True) -> Iterator[Path]:
    """A new, empty ``.NAME.RANDOM.tmp`` folder beside ``path`` to build several files in; removed afterwards.

    For files that must land together (a graph and its data file): build them here, then
    :func:`move_into_place`. Whatever is left in the folder is deleted on the way out, an error included.

    Raises:
        OSError: the folder cannot be created (the caller names the error for its file).
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        work = _temp_name(path)
        try:
            work.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def move_into_place(moves: Sequence[tuple[Path, Path]]) -> None:
    """Sync every ``(source, target)`` file, then rename them in order and sync the target folders.

    List the file that refers to the others last (an ONNX graph after its data file), so a crash between two
    renames leaves the old entry point, never one whose companions are missing.

    Raises:
        OSError: a file cannot be synced or renamed.
    """
    for source, _ in moves:
        fsync_file(source)
    for source, target in moves:
        os.replace(source, target)
    for folder in dict.fromkeys(Path(target).parent for _, target in moves):
        fsync_dir(folder)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (for callers that serialise in memory first)."""
    atomic_write(path, lambda p: p.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_model(path: Path, model: BaseModel) -> None:
    write_text(path, model.model_dump_json(indent=2) + "\n")


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: torch_save_file(obj, p))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line; a crash can cut only the last line, which ``read_jsonl`` then ignores."""
    try:
        with Path(path).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    except OSError as exc:
        raise write_error(path, exc) from exc

"""The shared ``.npy`` readers: header-only shape and dtype for every format version, and what they refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapmtl_cli.data.npy import load_npy, read_npy_header
from adapmtl_cli.errors import DataError


def _write(path: Path, array: np.ndarray, version: tuple[int, int]) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, version=version, allow_pickle=False)
    return path


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_header_gives_shape_and_dtype_in_every_version(tmp_path: Path, version: tuple[int, int]) -> None:
    path = _write(tmp_path / "a.npy", np.zeros((4, 5, 3), dtype=np.float32), version)
    shape, dtype = read_npy_header(path)
    assert shape == (4, 5, 3) and dtype == np.float32


def test_header_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy' holds Python objects \(dtype 'object'\); unpickling"):
        read_npy_header(path)


def test_header_refuses_truncated_files(tmp_path: Path) -> None:
    path = tmp_path / "short.npy"
    np.save(path, np.zeros((8, 8), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"short\.npy' is truncated \(\d+ bytes, its header needs \d+\); re-copy it"):
        read_npy_header(path)


def test_header_refuses_non_numeric_and_garbage(tmp_path: Path) -> None:
    text = tmp_path / "text.npy"
    np.save(text, np.array(["abc"]))
    with pytest.raises(DataError, match=r"text\.npy' has dtype '<U3'; expected a numeric array"):
        read_npy_header(text)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"garbage\.npy' is not a readable \.npy file .*re-save it with numpy\.save"):
        read_npy_header(garbage)
    with pytest.raises(DataError, match=r"missing\.npy' is not a readable \.npy file"):
        read_npy_header(tmp_path / "missing.npy")


def test_load_returns_the_array_and_refuses_non_finite_floats(tmp_path: Path) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(6, dtype=np.int64).reshape(2, 3))
    assert np.array_equal(load_npy(labels), np.arange(6).reshape(2, 3))
    for bad in (np.nan, np.inf):
        path = tmp_path / "depth.npy"
        np.save(path, np.array([1.0, bad], dtype=np.float32))
        with pytest.raises(DataError, match=r"depth\.npy' holds NaN or infinite values; fix or drop this sample"):
            load_npy(path)


def test_load_refuses_pickles_and_garbage(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"pickled\.npy' cannot be read .*re-save it with numpy\.save"):
        load_npy(pickled)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"garbage\.npy' cannot be read"):
        load_npy(garbage)


def _alarm(seconds: float):  # type: ignore[no-untyped-def]
    """Turn a blocking open into a test failure instead of a hung suite."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def guard():  # type: ignore[no-untyped-def]
        def expire(signum: int, frame: object) -> None:
            raise TimeoutError(f"still blocked after {seconds} s")

        old = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    return guard()


@pytest.mark.parametrize("reader", [read_npy_header, load_npy])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, reader) -> None:  # type: ignore[no-untyped-def]
    import os

    fifo = tmp_path / "0.npy"
    os.mkfifo(fifo)
    with _alarm(5), pytest.raises(DataError) as info:
        reader(fifo)
    assert str(info.value) == (
        f"{str(fifo)!r} is a FIFO (named pipe), not a regular file; dataset files must be plain files"
    )


@pytest.mark.parametrize("reader", [read_npy_header, load_npy])
def test_a_folder_or_device_is_refused(tmp_path: Path, reader) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "1.npy").mkdir()
    with pytest.raises(DataError, match=r"1\.npy' is a folder, not a regular file"):
        reader(tmp_path / "1.npy")
    with pytest.raises(DataError, match=r"'/dev/zero' is a character device, not a regular file"):
        reader(Path("/dev/zero"))


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    target = _write(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(2, 3), (1, 0))
    (tmp_path / "link.npy").symlink_to(target)
    assert read_npy_header(tmp_path / "link.npy")[0] == (2, 3)
    assert load_npy(tmp_path / "link.npy").tolist() == [[0, 1, 2], [3, 4, 5]]

"""The scene generators write every file through ``files.atomic``: synced, renamed, no temp file left on failure."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from adapmtl_cli.data.synth.generate import generate
from adapmtl_cli.errors import DataError
from adapmtl_cli.files import atomic

LAYOUTS = ["nyuv2", "nyuv2-adashare", "taskonomy"]


def _run(layout: str, root: Path) -> None:
    generate(layout, root, train=2, val=1, size=(16, 16), seed=0)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_generated_file_is_synced_before_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    synced: list[str] = []
    real_sync: Callable[[Path], None] = atomic.fsync_file

    def sync(path: Path) -> None:
        synced.append(Path(path).name)
        real_sync(path)

    monkeypatch.setattr(atomic, "fsync_file", sync)
    _run(layout, tmp_path / "out")
    written = _files(tmp_path / "out")
    assert written and not [p for p in written if p.name.endswith(".tmp")]
    # each final file came from a synced ".NAME.RANDOM.tmp" (the manifest twice: incomplete, then complete)
    for path in written:
        assert any(name.startswith(f".{path.name}.") and name.endswith(".tmp") for name in synced), path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_failed_write_is_one_data_error_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    def broken(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(DataError, match=r"^cannot write '.*': No space left on device; check that the folder") as info:
        _run(layout, tmp_path / "out")
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert not [p for p in _files(tmp_path / "out") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_regenerating_writes_the_same_bytes(tmp_path: Path, layout: str) -> None:
    _run(layout, tmp_path / "a")
    _run(layout, tmp_path / "b")
    _run(layout, tmp_path / "b")  # over an earlier generation
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name

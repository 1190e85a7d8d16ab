"""Atomic writes: every writer keeps the old file and leaves no temp file when a write fails; the small helpers."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from adapmtl_cli.config import ExportManifest
from adapmtl_cli.errors import AdapmtlError, ConfigError, ExportError
from adapmtl_cli.export.dense import save_dense
from adapmtl_cli.export.onnx import export_onnx
from adapmtl_cli.export.sparse_codec import save_sparse
from adapmtl_cli.files.atomic import (
    append_jsonl,
    atomic_write,
    move_into_place,
    read_jsonl,
    read_model,
    save_torch,
    temp_folder,
    write_bytes,
    write_model,
    write_text,
)
from adapmtl_cli.files.rundir import RunDir
from adapmtl_cli.train.state_files import save_state

MANIFEST = ExportManifest(
    dense="model.safetensors",
    dense_bytes=10,
    sparse="model.sparse.safetensors",
    sparse_bytes=4,
    sparse_roundtrip="bit-exact",
)


class _Conv(nn.Module):
    """The smallest model ``export_onnx`` takes: one image in, a tuple of one tensor out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.conv(x),)


_WEIGHTS = {"w": torch.arange(4096.0)}  # 16 KiB: past the file-size limit below in every format

# name -> (write one file into the folder, the error a failed write raises)
WRITERS: dict[str, tuple[Callable[[Path], object], type[AdapmtlError]]] = {
    "write_text": (lambda folder: write_text(folder / "t.txt", "x" * 4096), ConfigError),
    "write_bytes": (lambda folder: write_bytes(folder / "t.bin", b"x" * 4096), ConfigError),
    "write_model": (lambda folder: write_model(folder / "m.json", MANIFEST), ConfigError),
    "save_torch": (lambda folder: save_torch(folder / "s.pt", _WEIGHTS), ConfigError),
    "save_state": (lambda folder: save_state(RunDir(folder), {"step": 1, **_WEIGHTS}), ConfigError),
    "save_dense": (lambda folder: save_dense(_WEIGHTS, folder / "d.safetensors"), ExportError),
    "save_sparse": (lambda folder: save_sparse(_WEIGHTS, folder / "s.safetensors"), ExportError),
    "export_onnx": (
        lambda folder: export_onnx(_Conv(), torch.rand(1, 3, 8, 8), folder / "m.onnx", ["out"], exporter="legacy"),
        ExportError,
    ),
}

WRITER_NAMES = [
    pytest.param(name, marks=pytest.mark.onnx) if name == "export_onnx" else name for name in sorted(WRITERS)
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file and folder under ``folder`` (temp files included), with the files' bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", WRITER_NAMES)
def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    write, error = WRITERS[name]
    write(tmp_path)
    before = _snapshot(tmp_path)

    def broken(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(error) as info:
        write(tmp_path)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before
    message = str(info.value)
    assert "cannot write" in message and "Input/output error" in message and "\n" not in message


@pytest.mark.parametrize("name", WRITER_NAMES)
def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, name: str) -> None:
    """The file-size limit makes writes fail with EFBIG (a real OS error, also as root).

    Every writer names the OS error in its one-line error, also where the library reports a failed write as
    its own exception (safetensors' ``SafetensorError``, ``torch.save``'s ``RuntimeError``).
    """
    write, error = WRITERS[name]
    write(tmp_path)
    before = _snapshot(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))
    try:
        with pytest.raises(error) as info:
            write(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert _snapshot(tmp_path) == before
    message = str(info.value)
    assert "File too large" in message and "\n" not in message
    if name != "export_onnx":  # export/onnx.py words its own message ("ONNX export failed (OSError: ...)")
        assert message.startswith("cannot write")


def test_temp_folder_is_removed_with_its_contents_whatever_happens(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), temp_folder(tmp_path / "m.onnx") as work:
        (work / "half.onnx").write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_temp_folder_needs_the_target_folder_without_parents(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), temp_folder(tmp_path / "absent" / "m.onnx", parents=False):
        pass
    with temp_folder(tmp_path / "made" / "m.onnx") as work:
        assert work.parent == tmp_path / "made" and work.name.startswith(".m.onnx.")


def test_move_into_place_renames_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with temp_folder(tmp_path / "m.onnx") as work:
        (work / "m.onnx.data").write_bytes(b"data")
        (work / "m.onnx").write_bytes(b"graph")
        seen: list[str] = []
        real = os.replace

        def replace(src: str, dst: str) -> None:
            seen.append(Path(dst).name)
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        move_into_place([(work / "m.onnx.data", tmp_path / "m.onnx.data"), (work / "m.onnx", tmp_path / "m.onnx")])
    assert seen == ["m.onnx.data", "m.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_export_writers_do_not_create_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot write sparse file .*; check the folder$"):
        save_sparse(_WEIGHTS, tmp_path / "absent" / "s.safetensors")
    with pytest.raises(ExportError, match="cannot write ONNX file .*; check the folder and free space$"):
        WRITERS["export_onnx"][0](tmp_path / "absent")
    assert list(tmp_path.iterdir()) == []


# --- atomic_write and its callers -----------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("new but incompl")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left behind


def test_atomic_write_replaces_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["x.txt"]


def test_save_torch_round_trip(tmp_path: Path) -> None:
    state = {"step": 3, "w": torch.arange(4.0)}
    save_torch(tmp_path / "state" / "latest.pt", state)
    loaded = torch.load(tmp_path / "state" / "latest.pt", weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], state["w"])


# --- pydantic files ------------------------------------------------------------------------------


def test_write_and_read_model(tmp_path: Path) -> None:
    write_model(tmp_path / "manifest.json", MANIFEST)
    assert read_model(tmp_path / "manifest.json", ExportManifest) == MANIFEST


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"dense": "model.safetensors", ', "not a valid ExportManifest"),
        ("", "not a valid ExportManifest"),
        ('{"dense": 3}', "dense"),
        (
            '{"dense": "a", "dense_bytes": 1, "sparse": "b", "sparse_bytes": 1, "sparse_roundtrip": "bit-exact", '
            '"colour": "red"}',
            "colour",
        ),
    ],
)
def test_read_model_rejects_invalid_files(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        read_model(tmp_path / "manifest.json", ExportManifest)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_read_model_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_model(tmp_path / "nope.json", ExportManifest)


# --- jsonl ---------------------------------------------------------------------------------------


def test_read_jsonl_ignores_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": 0.5})
    append_jsonl(path, {"step": 2, "loss": 0.4})
    with path.open("a") as fh:
        fh.write('{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]


def test_read_jsonl_missing_file_and_blank_lines(tmp_path: Path) -> None:
    assert read_jsonl(tmp_path / "none.jsonl") == []
    (tmp_path / "m.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(tmp_path / "m.jsonl") == [{"a": 1}, {"a": 2}]

"""Resume-state files: sha256 sidecars, keeping the last two, and falling back past damaged or half-written saves."""

from __future__ import annotations

import hashlib
import os
import resource
from pathlib import Path
from typing import Any

import pytest
import torch

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.files.rundir import RunDir, sidecar
from adapmtl_cli.train.state_files import load_state, save_state, verify


def _payload(step: int) -> dict[str, Any]:
    return {"step": step, "w": torch.full((256,), float(step))}


def _steps(run: RunDir) -> int | None:
    return load_state(run, lambda raw: int(raw["step"])).value


def _saved(tmp_path: Path, *steps: int) -> RunDir:
    run = RunDir(tmp_path)
    for step in steps:
        save_state(run, _payload(step))
    return run


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_save_keeps_the_last_two_with_checksums(tmp_path: Path) -> None:
    run = _saved(tmp_path, 1, 2, 3)
    assert sorted(p.name for p in run.state_dir.iterdir()) == [
        "latest.pt",
        "latest.pt.sha256",
        "prev.pt",
        "prev.pt.sha256",
    ]
    assert torch.load(run.state, weights_only=True)["step"] == 3
    assert torch.load(run.prev_state, weights_only=True)["step"] == 2
    # sha256sum format, so `sha256sum -c latest.pt.sha256` works in the state folder
    digest = hashlib.sha256(run.state.read_bytes()).hexdigest()
    assert sidecar(run.state).read_text() == f"{digest}  latest.pt\n"
    assert verify(run.state) is None and verify(run.prev_state) is None
    loaded = load_state(run, lambda raw: raw["step"])
    assert (loaded.value, loaded.path, loaded.verified, loaded.rejected) == (3, run.state, True, [])


def test_truncated_latest_falls_back_to_prev(tmp_path: Path) -> None:
    run = _saved(tmp_path, 1, 2)
    data = run.state.read_bytes()
    run.state.write_bytes(data[: len(data) // 2])
    loaded = load_state(run, lambda raw: raw["step"])
    assert loaded.value == 1 and loaded.path == run.prev_state
    assert loaded.rejected == ["latest.pt: checksum mismatch (damaged or truncated)"]


def test_a_flipped_byte_that_torch_would_load_is_caught(tmp_path: Path) -> None:
    """Corrupt tensor data still unpickles fine; only the checksum notices."""
    run = _saved(tmp_path, 1, 2)
    raw = run.state.read_bytes()
    _flip_byte(run.state, raw.index(torch.full((256,), 2.0).numpy().tobytes()) + 5)
    assert not torch.equal(torch.load(run.state, weights_only=True)["w"], torch.full((256,), 2.0))
    assert _steps(run) == 1


def test_both_damaged_gives_nothing_and_says_why(tmp_path: Path) -> None:
    run = _saved(tmp_path, 1, 2)
    run.state.write_bytes(b"")
    _flip_byte(run.prev_state, 100)
    loaded = load_state(run, lambda raw: raw["step"])
    assert loaded.value is None and loaded.path is None
    assert [r.split(":")[0] for r in loaded.rejected] == ["latest.pt", "prev.pt"]


def test_a_state_without_checksum_is_used_only_when_nothing_verified_exists(tmp_path: Path) -> None:
    # crash after the new latest.pt landed but before its sidecar: the verified prev wins
    run = _saved(tmp_path, 1, 2)
    sidecar(run.state).unlink()
    loaded = load_state(run, lambda raw: raw["step"])
    assert loaded.value == 1 and loaded.rejected == ["latest.pt: no checksum file"]
    # a run saved before checksums existed: nothing is verified, the newest loadable one is used
    sidecar(run.prev_state).unlink()
    loaded = load_state(run, lambda raw: raw["step"])
    assert (loaded.value, loaded.verified) == (2, False)


def test_a_state_the_parser_refuses_falls_back(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    save_state(run, _payload(1))
    save_state(run, {"something": "else"})
    loaded = load_state(run, lambda raw: int(raw["step"]))
    assert loaded.value == 1
    assert loaded.rejected[0].startswith("latest.pt: cannot be read (KeyError")


def test_a_pickle_in_a_state_file_is_never_run(tmp_path: Path) -> None:
    """State files are opened with weights_only=True even when their checksum matches."""
    run = RunDir(tmp_path)
    save_state(run, _payload(1))
    save_state(run, {"step": 2, "obj": _Evil()})
    assert _steps(run) == 1
    assert not (tmp_path / "pwned").exists()


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_crash_anywhere_inside_a_save_leaves_a_loadable_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    """Kill the save at each of its renames: a state always loads, and it is step 2 or the new step 3."""
    run = _saved(tmp_path, 1, 2)
    real = os.replace
    calls = {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt  # a process dying here (not an OSError: nothing tidies up)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_state(run, _payload(3))
    monkeypatch.setattr(os, "replace", real)
    assert _steps(run) in (2, 3)


def test_a_full_disk_keeps_both_older_states(tmp_path: Path) -> None:
    """The file-size limit makes writes fail with EFBIG (a real OS error, also as root)."""
    run = _saved(tmp_path, 1, 2)
    before = {p.name: p.read_bytes() for p in run.state_dir.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
    try:
        with pytest.raises(ConfigError) as info:
            save_state(run, _payload(3))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(info.value)
    assert "latest.pt" in message and "File too large" in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in run.state_dir.iterdir()} == before  # no temp file left either

"""Run folders: atomic writes, when a folder may be (re)used, and reading files back with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapmtl_cli.config import ExportManifest
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.files.rundir import (
    RunDir,
    append_jsonl,
    atomic_write,
    prepare_run_dir,
    read_jsonl,
    read_model,
    save_torch,
    write_model,
    write_text,
)

MANIFEST = ExportManifest(
    dense="model.safetensors",
    dense_bytes=10,
    sparse="model.sparse.safetensors",
    sparse_bytes=4,
    sparse_roundtrip="bit-exact",
)


def _make_run(root: Path) -> RunDir:
    run = RunDir(root)
    write_text(run.config, "{}\n")
    return run


# --- atomic writes -------------------------------------------------------------------------------


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


# --- prepare_run_dir -----------------------------------------------------------------------------


def test_new_and_empty_folders_are_accepted(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "new" / "run", resume=False, overwrite=False)
    assert run.root.is_dir()
    assert prepare_run_dir(run.root, resume=False, overwrite=False).root == run.root


def test_occupied_folder_refused_without_resume_or_overwrite(tmp_path: Path) -> None:
    _make_run(tmp_path)
    with pytest.raises(ConfigError) as info:
        prepare_run_dir(tmp_path, resume=False, overwrite=False)
    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not an adapmtl run folder"):
        prepare_run_dir(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="no run to resume"):
        prepare_run_dir(tmp_path, resume=True, overwrite=False)
    with pytest.raises(ConfigError, match="no run to resume"):
        prepare_run_dir(tmp_path / "missing", resume=True, overwrite=False)


def test_resume_keeps_the_run(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    append_jsonl(run.metrics, {"step": 1})
    save_torch(run.state, {"step": 1})
    assert prepare_run_dir(tmp_path, resume=True, overwrite=False).root == tmp_path
    assert run.metrics.exists() and run.state.exists()


def test_overwrite_clears_the_old_results(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    append_jsonl(run.metrics, {"step": 1})
    save_torch(run.state, {"step": 1})
    save_torch(run.prev_state, {"step": 0})
    write_text(run.report, "{}")
    write_text(run.dense_metrics, "{}")
    run.weights.write_bytes(b"w")
    prepare_run_dir(tmp_path, resume=False, overwrite=True)
    for path in (run.metrics, run.state, run.prev_state, run.report, run.dense_metrics, run.weights):
        assert not path.exists(), path.name


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)


def test_run_dir_layout(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert not run.is_run()
    assert run.state == tmp_path / "state" / "latest.pt"
    assert run.metrics.name == "metrics.jsonl" and run.weights.name == "pruned.safetensors"
    write_text(run.config, json.dumps({}))
    assert run.is_run()

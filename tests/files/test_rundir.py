"""Run folders: the layout, and when a folder may be used, resumed or overwritten (with one-line errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapmtl_cli.config import ExportManifest
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.files.atomic import (
    append_jsonl,
    save_torch,
    write_text,
)
from adapmtl_cli.files.rundir import RunDir, prepare_run_dir

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

"""Run folders survive a change of directory: resolved paths, typed forms for display, the checkpoint's identity.

Classes covered: paths typed relative to where ``prune`` ran (checkpoint, dataset folder, ``--factory`` and
``--data`` files), used later from another directory by ``resume`` and ``export``; a checkpoint replaced by
another file under the same name, or removed, after the run started (refused, naming both sizes and hashes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from noisy_run import run_noisy, write_noisy_inputs

from adapmtl_cli.config import PruneConfig, make_prune_config
from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.files.identity import file_sha256
from adapmtl_cli.jobs.export import export_run
from adapmtl_cli.jobs.prune import resume_prune
from adapmtl_cli.jobs.run_inputs import check_checkpoint_identity, record_inputs


def _cfg(**values: object) -> PruneConfig:
    return make_prune_config(**{"checkpoint": "model.pt", "data_dir": "scenes", "out": "run", **values})


def test_record_inputs_resolves_paths_and_keeps_what_was_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"weights")
    cfg = record_inputs(_cfg(factory="models/net.py:build", data="plugins/data.py"))
    assert cfg.checkpoint == str(tmp_path / "model.pt") and cfg.data_dir == str(tmp_path / "scenes")
    assert cfg.factory == f"{tmp_path / 'models' / 'net.py'}:build" and cfg.data == str(tmp_path / "plugins/data.py")
    assert cfg.typed_paths == {
        "checkpoint": "model.pt",
        "data_dir": "scenes",
        "factory": "models/net.py:build",
        "data": "plugins/data.py",
    }
    assert cfg.shown("checkpoint") == "model.pt" and cfg.shown("out") == "run"
    assert cfg.checkpoint_identity is not None
    assert (cfg.checkpoint_identity.bytes, cfg.checkpoint_identity.sha256) == (7, file_sha256(tmp_path / "model.pt"))


def test_record_inputs_leaves_modules_and_absolute_paths_alone(tmp_path: Path) -> None:
    cfg = record_inputs(_cfg(checkpoint=str(tmp_path / "absent.pt"), data_dir=str(tmp_path), factory="pkg.mod:build"))
    assert cfg.typed_paths == {} and cfg.factory == "pkg.mod:build" and cfg.data == "synthetic"
    assert cfg.checkpoint_identity is None  # loading names the missing file with its own message


def test_a_changed_or_missing_checkpoint_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"weights")
    cfg = record_inputs(_cfg())
    check_checkpoint_identity(cfg, "resume")
    check_checkpoint_identity(cfg.model_copy(update={"checkpoint_identity": None}), "resume")  # an older run
    (tmp_path / "model.pt").write_bytes(b"other weights")
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_identity(cfg, "export")
    message = str(info.value)
    assert message.startswith(f"checkpoint {str(tmp_path / 'model.pt')!r} (typed as 'model.pt') is not the file")
    assert "it had 7 bytes" in message and "it now has 13 bytes" in message and "export would use other" in message
    (tmp_path / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="does not exist; resume needs the file this run was pruned from"):
        check_checkpoint_identity(cfg, "resume")


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run pruned from inside its project folder with every path typed relative to it (4 steps)."""
    project = tmp_path_factory.mktemp("project")
    write_noisy_inputs(project)
    typed = {"checkpoint": "dense.pt", "factory": "noisy_net.py:build", "data": "noisy_plugin.py", "data_dir": "."}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        run_noisy(typed, Path("runs/a"), steps=4)
    return project / "runs" / "a"


def test_a_run_folder_stores_resolved_paths_and_the_typed_ones(relative_run: Path) -> None:
    project = relative_run.parents[1]
    stored = json.loads((relative_run / "config.json").read_text())
    assert stored["checkpoint"] == str(project / "dense.pt") and stored["data_dir"] == str(project)
    assert stored["typed_paths"]["checkpoint"] == "dense.pt" and stored["typed_paths"]["data_dir"] == "."
    assert stored["checkpoint_identity"]["sha256"] == file_sha256(project / "dense.pt")
    assert 'checkpoint = "' + str(project / "dense.pt") in (relative_run / "config.toml").read_text()


def test_resume_and_export_work_from_another_directory(
    relative_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = shutil.copytree(relative_run, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)  # holds no dense.pt, noisy_net.py or noisy_plugin.py
    assert resume_prune(run).steps == 4
    manifest = export_run(run)
    assert Path(manifest.sparse).is_file()


def test_resume_and_export_refuse_another_checkpoint_under_the_same_name(
    relative_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = shutil.copytree(relative_run.parents[1], tmp_path / "project")
    run = project / "runs" / "a"
    stored = json.loads((run / "config.json").read_text())
    stored["checkpoint"] = str(project / "dense.pt")  # the copied project, with a retrained checkpoint
    (run / "config.json").write_text(json.dumps(stored))
    state = torch.load(project / "dense.pt", weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, project / "dense.pt")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for attempt in (lambda: resume_prune(run), lambda: export_run(run)):
        with pytest.raises(CheckpointError, match="is not the file this run was pruned from"):
            attempt()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

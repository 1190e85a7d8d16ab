"""Fast failures: a wrong path or option is refused before torch is imported, in the loaders' own words."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapmtl_cli.cli import preflight
from adapmtl_cli.errors import AdapmtlError, CheckpointError, ConfigError, DataError

# Each case runs in one fresh interpreter, one after the other, and records whether torch was imported by then.
CHILD = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from adapmtl_cli.cli.app import app

    out = []
    for args in json.loads(sys.argv[1]):
        result = CliRunner().invoke(app, args)
        out.append({"args": args, "code": result.exit_code, "stderr": result.stderr, "torch": "torch" in sys.modules})
    print(json.dumps(out))
    """
)


def _cases(tmp: Path) -> list[list[str]]:
    (tmp / "scenes").mkdir()
    (tmp / "full").mkdir()
    (tmp / "full" / "mine.txt").write_text("keep me")
    (tmp / "model.pt").write_bytes(b"not read before the data folder is checked")
    missing = str(tmp / "nope.pt")
    common = ["--factory", "adapmtl_cli.models:deeplab_resnet_tiny", "--data-dir", str(tmp / "scenes")]
    return [
        ["prune", missing, *common, "--out", str(tmp / "run")],
        ["prune", str(tmp / "model.pt"), "--data-dir", str(tmp / "no-data"), "--out", str(tmp / "run")],
        [
            "prune",
            str(tmp / "model.pt"),
            "--factory",
            f"{tmp / 'nope.py'}:build",
            *common[2:],
            "--out",
            str(tmp / "run"),
        ],
        ["prune", missing, *common, "--out", str(tmp / "run"), "--data", str(tmp / "plugin.py")],
        ["inspect", missing, *common],
        ["inspect", str(tmp / "scenes"), *common],
        ["resume", str(tmp / "no-run")],
        ["report", str(tmp / "no-run")],
        ["report", str(tmp / "no-run"), "--format", "pdf"],
        ["export", str(tmp / "no-run")],
        ["export", "--densify", str(tmp / "no.sparse.safetensors"), str(tmp / "d.safetensors")],
        ["data", "check", str(tmp / "no-data")],
        ["demo", "--out", str(tmp / "full")],
    ]


def test_wrong_paths_and_options_fail_before_torch_is_imported(tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    for r in results:
        lines = r["stderr"].splitlines()
        assert r["code"] == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r
        assert not r["torch"], f"torch was imported before {r['args']} failed: {lines}"
    messages = [r["stderr"] for r in results]
    assert "nope.pt' does not exist" in messages[0]
    assert "no-data' does not exist" in messages[1]
    assert "--factory file" in messages[2] and "does not exist" in messages[2]
    assert "--data plug-in file" in messages[3]
    assert "is a folder; pass the checkpoint file" in messages[5]
    assert "no-run' does not exist" in messages[6] and "no-run' does not exist" in messages[7]
    assert "--format 'pdf'" in messages[8]
    assert "already holds files" in messages[12]
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "run").exists()


def _message(fn: object, *args: object) -> str:
    with pytest.raises(AdapmtlError) as info:
        fn(*args)  # type: ignore[operator]
    return str(info.value)


@pytest.mark.parametrize("kind", ["missing", "folder", "empty"])
def test_checkpoint_messages_are_the_loaders(tmp_path: Path, kind: str) -> None:
    from adapmtl_cli.model.loading import load_model

    path = tmp_path / "model.pt"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    early = _message(preflight.check_checkpoint, path)
    late = _message(lambda: load_model(path, factory="adapmtl_cli.models:deeplab_resnet_tiny"))
    assert early == late


def test_factory_and_plugin_messages_are_the_loaders(tmp_path: Path) -> None:
    from adapmtl_cli.data import get_dataset
    from adapmtl_cli.model.loading import load_factory

    spec = f"{tmp_path / 'models.py'}:build"
    assert _message(preflight.check_factory, spec) == _message(load_factory, spec)
    plugin = str(tmp_path / "plugin.py")
    assert _message(preflight.check_data_plugin, plugin) == _message(get_dataset, plugin)
    (tmp_path / "folder.py").mkdir()
    folder = str(tmp_path / "folder.py")
    assert _message(preflight.check_data_plugin, folder) == _message(get_dataset, folder)


def test_checks_accept_what_the_loaders_accept(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    preflight.check_checkpoint(tmp_path / "model.pt")
    preflight.check_factory("adapmtl_cli.models:deeplab_resnet_tiny")  # a module: importing it is the loader's job
    preflight.check_factory("malformed")  # the loader names the malformed spec
    preflight.check_data_plugin("synthetic")
    preflight.check_dataset_root(tmp_path)
    preflight.check_run_folders([tmp_path])


def test_a_dataset_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="is not a folder"):
        preflight.check_dataset_root(tmp_path / "f")


def test_every_missing_run_is_named_at_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as info:
        preflight.check_run_folders([tmp_path / "a", tmp_path / "file", tmp_path / "b"])
    text = str(info.value)
    assert text.count("does not exist") == 2 and "is a file" in text


def test_a_fifo_checkpoint_is_refused_without_reading_it(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        preflight.check_checkpoint(fifo)


def test_under_torchrun_the_checks_are_left_to_the_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    preflight.check_run_folders([tmp_path / "missing"])  # every rank must fail together, in the job

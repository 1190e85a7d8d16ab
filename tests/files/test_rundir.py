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


# --- the run-folder lock -------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from adapmtl_cli.files.rundir import claim_run_dir
with claim_run_dir(Path(sys.argv[1]), resume=False, overwrite=False):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(root: Path):  # type: ignore[no-untyped-def]
    """Another process that claims ``root`` and keeps it until killed."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_claim_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    from adapmtl_cli.files.rundir import claim_run_dir

    root = tmp_path / "runs" / "a"
    with claim_run_dir(root, resume=False, overwrite=False) as run:
        write_text(run.config, "{}\n")
        for resume, overwrite in ((False, False), (True, False), (False, True)):
            with pytest.raises(ConfigError) as info:
                with claim_run_dir(root, resume=resume, overwrite=overwrite):
                    pytest.fail("a second command got the folder")
            assert str(info.value) == (
                f"--out {str(root)!r} is in use by another running adapmtl command (prune, resume or export); "
                "wait for it to finish, or pass another --out"
            )
        assert sorted(p.name for p in root.iterdir()) == ["config.json"]
    # Released at the end of the block: the run can be resumed now.
    with claim_run_dir(root, resume=True, overwrite=False) as again:
        assert again.root == root


def test_run_lock_refuses_while_a_claim_is_held_and_frees_after(tmp_path: Path) -> None:
    from adapmtl_cli.files.rundir import claim_run_dir, run_lock

    with claim_run_dir(tmp_path, resume=False, overwrite=False):
        with pytest.raises(ConfigError) as info:
            with run_lock(tmp_path):
                pytest.fail("export got a folder that prune is writing")
        assert str(info.value) == (
            f"run folder {str(tmp_path)!r} is in use by another running adapmtl command (prune, resume or "
            "export); wait for it to finish"
        )
    with run_lock(tmp_path) as lock:
        assert lock.held
    assert not lock.held
    assert list(tmp_path.iterdir()) == []  # the lock leaves no file behind


def test_another_process_holds_the_lock_until_it_is_killed(tmp_path: Path) -> None:
    import signal

    from adapmtl_cli.files.rundir import claim_run_dir

    root = tmp_path / "run"
    proc = _holder(root)
    try:
        with pytest.raises(ConfigError, match="is in use by another running adapmtl command"):
            with claim_run_dir(root, resume=False, overwrite=False):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # SIGKILL gave the holder no chance to clean up; the kernel dropped its lock anyway.
    with claim_run_dir(root, resume=False, overwrite=False) as run:
        assert run.root == root


def test_claim_keeps_the_errors_of_prepare_run_dir(tmp_path: Path) -> None:
    from adapmtl_cli.files.rundir import claim_run_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        with claim_run_dir(tmp_path / "file", resume=False, overwrite=False):
            pass
    with pytest.raises(ConfigError, match="cannot be used: Not a directory"):
        with claim_run_dir(tmp_path / "file" / "run", resume=False, overwrite=False):
            pass
    with pytest.raises(ConfigError, match="no run to resume"):
        with claim_run_dir(tmp_path / "missing", resume=True, overwrite=False):
            pass
    assert not (tmp_path / "missing").exists()


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path: Path) -> None:
    """A DataLoader worker forked while a run holds its lock must not hold it after the run released it."""
    import os
    import signal

    from adapmtl_cli.files.rundir import lock_run_dir

    root = tmp_path / "run"
    root.mkdir()
    lock = lock_run_dir(root, "--out 'run'", "wait")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (its fork hooks have run): say so, then outlive the parent's release
        os.write(ready_w, b"x")
        signal.pause()
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        lock.release()
        again = lock_run_dir(root, "--out 'run'", "wait")  # refused if the child still held the lock
        again.release()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

"""Bad inputs of issue #16's models-and-data round, through the real CLI: exit 2, one ``Error:`` line, no damage.

Classes covered (each case builds its input itself):

- **labels that are not labels**: fractional segmentation labels (``0.5``) in the MTAN layout, refused by
  ``prune`` and by ``data check`` instead of being rounded to class ids;
- **odd files**: a FIFO (and a folder) where a dataset file should be, refused at once instead of blocking
  forever;
- **nested outputs**: several outputs at the same (shallowest) depth matching one task (MTI-Net-style deep
  supervision without final heads), refused with their paths; ``--outputs TASK=PATH`` naming no output, or
  mixing the two forms;
- **shared run folders**: a run folder another command holds (``prune``, ``resume``, ``export`` running), refused
  by every command that writes it, which then leaves it byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, CliRun, copy_run, invoke, snapshot_files, time_limit, user_error  # noqa: E402

from adapmtl_cli.files.rundir import run_lock  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

REAL_MODELS = Path(__file__).parents[1] / "real_models.py"
QUICK = ("--steps", "3", "--batch-size", "4", "--device", "cpu", "-q")


def _prune(checkpoint: Path, scenes: Path, out: Path, *extra: object) -> list[object]:
    return ["prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, *QUICK, *extra]


def _scenes(scenes: Path, tmp_path: Path, change: Callable[[Path], None]) -> Path:
    root = Path(shutil.copytree(scenes, tmp_path / "scenes"))
    change(root)
    return root


def _fractional(split: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / split / "label" / "0.npy"
        label = np.load(path).astype(np.float32)
        label[2, 3] = 0.5
        np.save(path, label)

    return change


def _fifo(root: Path) -> None:
    path = root / "train" / "depth" / "3.npy"
    path.unlink()
    os.mkfifo(path)


# --- labels that are not labels, odd files ----------------------------------------------------------------


def test_prune_refuses_fractional_labels(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    data = _scenes(scenes, tmp_path, _fractional("train"))
    message = user_error(invoke(*_prune(checkpoint, data, tmp_path / "run")))
    assert "label/0.npy' holds segmentation label 0.5 (1 such pixels), which is not a class id" in message
    assert not (tmp_path / "run").exists()


def test_data_check_refuses_fractional_labels(scenes: Path, tmp_path: Path) -> None:
    data = _scenes(scenes, tmp_path, _fractional("val"))
    message = user_error(invoke("data", "check", data, "--data", "synthetic"))
    assert "val/label/0.npy' holds segmentation label 0.5" in message and "nearest-neighbour" in message


@pytest.mark.parametrize("command", ["prune", "data check"])
def test_a_fifo_in_the_dataset_is_refused_without_hanging(
    command: str, checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    data = _scenes(scenes, tmp_path, _fifo)
    args = _prune(checkpoint, data, tmp_path / "run") if command == "prune" else ["data", "check", data]
    with time_limit(120):
        message = user_error(invoke(*args))
    assert message.endswith(
        "depth/3.npy' is a FIFO (named pipe), not a regular file; dataset files must be plain files"
    )
    assert not (tmp_path / "run").exists()


# --- nested outputs ---------------------------------------------------------------------------------------


def _deep_supervision(tmp_path: Path, factory: str) -> tuple[Path, str]:
    import sys

    sys.path.insert(0, str(REAL_MODELS.parent))
    import real_models

    path = tmp_path / "mti.pt"
    torch.save(real_models.deep_supervision().state_dict(), path)
    return path, f"{REAL_MODELS}:{factory}"


@pytest.mark.parametrize(
    ("factory", "outputs", "expect"),
    [
        (
            "deep_supervision_only",
            None,
            "task 'segmentation' matches 2 outputs at the same depth (deep_supervision.scale_0.semseg, "
            "deep_supervision.scale_1.semseg); pass --outputs segmentation=PATH with the one to use",
        ),
        ("deep_supervision", "segmentation=logits", "--outputs segmentation='logits' matches no model output"),
        ("deep_supervision", "seg=semseg,depth", "--outputs mixes TASK=PATH entries with the positional name 'depth'"),
        ("deep_supervision", "depth=semseg,seg=semseg", "--outputs gives output semseg to tasks 'depth' and"),
    ],
)
def test_nested_outputs_that_cannot_be_told_apart(
    factory: str, outputs: str | None, expect: str, scenes: Path, tmp_path: Path
) -> None:
    checkpoint, reference = _deep_supervision(tmp_path, factory)
    args = ["prune", checkpoint, "--factory", reference, "--data-dir", scenes, "--out", tmp_path / "run", *QUICK]
    message = user_error(invoke(*args, *(["--outputs", outputs] if outputs else [])))
    assert expect in message
    assert not (tmp_path / "run").exists()


# --- a run folder another command holds ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["prune --resume", "prune --overwrite", "resume", "export"])
def test_a_run_folder_in_use_is_refused_and_left_alone(
    command: str, checkpoint: Path, scenes: Path, pruned_run: CliRun, tmp_path: Path
) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")
    before = snapshot_files(run)
    args = {
        "prune --resume": [*_prune(checkpoint, scenes, run), "--resume"],
        "prune --overwrite": [*_prune(checkpoint, scenes, run), "--overwrite"],
        "resume": ["resume", run, "-q"],
        "export": ["export", run, "--onnx"],
    }[command]
    with run_lock(run):  # another prune, resume or export of this folder is running
        message = user_error(invoke(*args))
    assert "is in use by another running adapmtl command (prune, resume or export); wait for it to finish" in message
    assert str(run) in message
    assert snapshot_files(run) == before
    assert not (run / "export").exists()


def test_two_prunes_into_one_new_folder(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    out.mkdir()
    with run_lock(out):  # the first prune has just created and claimed it
        message = user_error(invoke(*_prune(checkpoint, scenes, out)))
    assert message == (
        f"--out {str(out)!r} is in use by another running adapmtl command (prune, resume or export); "
        "wait for it to finish, or pass another --out"
    )
    assert list(out.iterdir()) == []

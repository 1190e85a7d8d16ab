"""Checks of the paths a command names, made before torch is imported, so a typo fails in a fraction of a second.

Importing torch takes seconds on an idle machine (45 s was seen on a busy one); the commands check what the
file system can tell them first: the checkpoint, a ``--factory`` or ``--data`` file, the dataset folder, the run
folders. The checks repeat what the loaders check later, with the same words (``tests/cli/test_preflight.py``
holds them to the loaders' messages), and only refuse what the loaders would refuse; everything else (the
contents of a file) is still the loaders' job. Under ``torchrun`` the checks are skipped: there every process
must fail together, which the job arranges (``train.distributed``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from adapmtl_cli.config import PruneConfig
from adapmtl_cli.errors import CheckpointError, ConfigError, DataError


def distributed() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False  # the job names a malformed WORLD_SIZE


def check_checkpoint(path: Path) -> None:
    """The checkpoint is a non-empty regular file (what ``model.loading`` refuses first).

    Raises:
        CheckpointError: it does not exist, is a folder, is not a regular file, or is empty.
    """
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; pass the checkpoint file")
    if not stat.S_ISREG(path.stat().st_mode):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a regular file; pass the checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")


def check_factory(spec: str | None) -> None:
    """A ``--factory`` given as ``path/file.py:function`` names a file that exists (a module form is not checked).

    Raises:
        CheckpointError: the file part names no file.
    """
    if spec is None:
        return
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        return  # the loader names the malformed spec
    if (module_part.endswith(".py") or "/" in module_part or "\\" in module_part) and not Path(module_part).is_file():
        raise CheckpointError(f"--factory file {module_part!r} does not exist")


def check_data_plugin(data: str) -> None:
    """A ``--data`` given as a ``.py`` path names a file.

    Raises:
        ConfigError: the file does not exist, or is a folder.
    """
    if not data.endswith(".py"):
        return
    path = Path(data)
    if not path.exists():
        raise ConfigError(f"--data plug-in file {data!r} does not exist; pass path/to/plugin.py")
    if not path.is_file():
        raise ConfigError(f"--data plug-in {data!r} is a folder; pass the plug-in's .py file")


def check_dataset_root(root: str | Path, option: str = " as --data-dir") -> None:
    """The dataset folder of a built-in dataset exists and is a folder (a plug-in reads its root as it likes).

    Raises:
        DataError: it does not exist, or is a file.
    """
    path = Path(root)
    if not path.exists():
        raise DataError(f"dataset root {str(path)!r} does not exist; pass the dataset folder{option}")
    if not path.is_dir():
        raise DataError(f"dataset root {str(path)!r} is not a folder; pass the dataset folder{option}")


def check_prune_inputs(cfg: PruneConfig, *, resume: bool = False) -> None:
    """Everything of ``cfg`` the file system can tell before torch loads; a resumed run uses its saved paths."""
    if resume or distributed():
        return
    check_data_plugin(cfg.data)
    check_checkpoint(Path(cfg.checkpoint))
    check_factory(cfg.factory)
    if not plugin_reference(cfg.data):
        check_dataset_root(cfg.data_dir)


def plugin_reference(data: str) -> bool:
    """Whether ``--data`` names a plug-in: built-ins are plain names (``data.registry.is_plugin_reference``)."""
    return data.endswith(".py") or "/" in data or "\\" in data or "." in data


def check_run_folders(runs: Iterable[Path]) -> None:
    """Each run folder exists and is a folder (every missing one named on one line).

    Raises:
        ConfigError: a run folder is missing or is a file.
    """
    problems = []
    for run in runs:
        if not run.exists():
            problems.append(f"run folder {str(run)!r} does not exist; pass a folder written by `adapmtl prune`")
        elif not run.is_dir():
            problems.append(f"run folder {str(run)!r} is a file; pass a folder written by `adapmtl prune`")
    if problems and not distributed():
        raise ConfigError("; ".join(problems))


def check_demo_out(out: Path, overwrite: bool) -> None:
    """``demo --out`` is a folder that is empty or may be replaced (``jobs.demo.check_demo_folder``'s rule).

    Raises:
        ConfigError: ``out`` is a file, or holds files and ``overwrite`` is off.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder for the demo")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {str(out)!r} already holds files; pass --overwrite or another --out")

"""The inputs a run folder records: resolved paths and the checkpoint's identity, and the check that they still hold.

``prune`` runs from some working directory with paths typed relative to it. A run folder is used later from
anywhere (``adapmtl resume RUN``, ``adapmtl export RUN``), so its ``config.json`` stores the checkpoint, the
dataset folder and the file parts of ``--factory`` and ``--data`` as absolute paths (the typed forms are kept in
``typed_paths`` for display), and the checkpoint's size and sha256. Resume and export check that the checkpoint
is still that file: another file under the same name would silently give other weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from adapmtl_cli.config import FileIdentity, PruneConfig
from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.files.identity import identify


def _absolute(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def _is_path_spec(module_part: str) -> bool:
    """Whether a ``--factory``/``--data`` reference names a file (``x.py``, ``dir/x``) rather than a module."""
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def _absolute_reference(spec: str) -> str:
    """``path/file.py:function`` with the path made absolute; a ``module:function`` reference as it is."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not _is_path_spec(module_part):
        return spec
    return f"{_absolute(module_part)}:{attr}"


def record_inputs(cfg: PruneConfig) -> PruneConfig:
    """``cfg`` as a new run stores it: paths absolute (typed forms in ``typed_paths``), the checkpoint identified.

    A checkpoint that is not a readable regular file gets no identity (loading it fails with its own message).
    """
    resolved = {"checkpoint": _absolute(cfg.checkpoint), "data_dir": _absolute(cfg.data_dir)}
    if cfg.factory is not None:
        resolved["factory"] = _absolute_reference(cfg.factory)
    if cfg.data.endswith(".py"):
        resolved["data"] = _absolute(cfg.data)
    typed = {name: str(getattr(cfg, name)) for name, value in resolved.items() if value != getattr(cfg, name)}
    found = identify(Path(resolved["checkpoint"]))
    identity = None if found is None else FileIdentity(bytes=found[0], sha256=found[1])
    return cfg.model_copy(update={**resolved, "typed_paths": typed, "checkpoint_identity": identity})


def check_checkpoint_identity(cfg: PruneConfig, command: str) -> None:
    """Refuse a run whose checkpoint is gone or is no longer the file it was pruned from.

    Runs written before identities were recorded are not checked.

    Args:
        command: what would use the checkpoint (``"resume"``, ``"export"``), for the message.

    Raises:
        CheckpointError: the checkpoint is missing, not a file, or differs in size or sha256.
    """
    recorded = cfg.checkpoint_identity
    if recorded is None:
        return
    path = Path(cfg.checkpoint)
    typed = cfg.typed_paths.get("checkpoint")
    name = f"{str(path)!r}" + (f" (typed as {typed!r})" if typed else "")
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {name} does not exist; {command} needs the file this run was pruned from: put it back at "
            "that path"
        )
    found = identify(path)
    if found is None:
        raise CheckpointError(f"checkpoint {name} is not a readable file; {command} needs the file it was pruned from")
    if found != (recorded.bytes, recorded.sha256):
        raise CheckpointError(
            f"checkpoint {name} is not the file this run was pruned from (it had {recorded.bytes} bytes, sha256 "
            f"{recorded.sha256[:12]}...; it now has {found[0]} bytes, sha256 {found[1][:12]}...); {command} would "
            "use other weights: put the original back, or prune the new checkpoint into a new run"
        )

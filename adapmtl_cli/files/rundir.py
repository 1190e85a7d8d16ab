"""Run-folder layout: where each file of a run lives, and when a folder may be used, resumed or overwritten.

```
RUN/
  config.json        resolved PruneConfig
  components.json    ComponentsManifest (discovery)
  dense_metrics.json dense model on the validation split (computed once, reused on --resume)
  metrics.jsonl      one line per logged step
  state/latest.pt    resume state (model + thresholds, optimizer, weighting, RNG, step); previous kept as prev.pt;
                     each with a ``.sha256`` sidecar (see ``train/state_files.py``)
  pruned.safetensors baked weights (exact zeros), keys as in the user's state_dict
  report.json        RunReport
  export/            written by `adapmtl export`
```

Files in it are written with ``files/atomic.py`` (temp file, fsync, rename): a crash never leaves half a file,
only a stale ``.NAME.*.tmp`` that :func:`remove_stale_temps` deletes on resume.

**One writer at a time.** Every command that writes a run folder (``prune``, ``resume``, ``export``) holds an
exclusive ``flock`` on the folder itself (:func:`claim_run_dir`, :func:`run_lock`) while it runs; a second one
is refused at once with a ``ConfigError``, before it writes anything. The lock lives in the kernel on an open
descriptor of the folder, not in a lock file: it leaves nothing in the folder, and a killed process (SIGKILL,
power loss aside) drops it with its descriptors, so a stale lock can never block a later command. Where the
file system cannot lock (some network mounts) the command runs unlocked, as it did before locking existed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapmtl_cli.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; commands run unlocked there
    fcntl = None  # type: ignore[assignment]


class RunDir:
    """Paths of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    components = property(lambda self: self.root / "components.json")
    dense_metrics = property(lambda self: self.root / "dense_metrics.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    state_dir = property(lambda self: self.root / "state")
    state = property(lambda self: self.root / "state" / "latest.pt")
    prev_state = property(lambda self: self.root / "state" / "prev.pt")
    weights = property(lambda self: self.root / "pruned.safetensors")
    report = property(lambda self: self.root / "report.json")
    export_dir = property(lambda self: self.root / "export")

    def is_run(self) -> bool:
        return self.config.is_file()


def sidecar(path: Path) -> Path:
    """The checksum file of ``path``: ``NAME.sha256``, in ``sha256sum`` format."""
    return Path(path).with_name(Path(path).name + ".sha256")


def remove_stale_temps(run: RunDir) -> list[Path]:
    """Delete the temporary files a killed process left behind (``.NAME.*.tmp``); return them."""
    stale = []
    for folder in (run.root, run.state_dir):
        if folder.is_dir():
            stale += [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def prepare_run_dir(root: Path, *, resume: bool, overwrite: bool) -> RunDir:
    """Check that ``root`` may be written: new, or an earlier run we resume or overwrite.

    Takes no lock: a command that writes the folder uses :func:`claim_run_dir`, which checks under the lock.
    """
    run = RunDir(root)
    try:
        return _prepare_run_dir(run, resume=resume, overwrite=overwrite)
    except OSError as exc:  # read-only or unreachable --out: a user problem, not a bug
        raise _unusable(root, exc) from exc


def _unusable(root: Path, exc: OSError) -> ConfigError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ConfigError(f"--out {str(root)!r} cannot be used: {reason}; pass a folder you can write to")


_BUSY = "is in use by another running adapmtl command (prune, resume or export)"


_HELD: set[int] = set()
"""Descriptors of the locks this process holds. A forked child (a DataLoader worker) inherits them, and an
``flock`` lives until every descriptor of it is closed, so a child outliving the command would keep the folder
locked: children close their copies right after the fork."""


def _close_inherited_locks() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class RunLock:
    """An exclusive ``flock`` on a run folder's own descriptor; :meth:`release` (or process exit) drops it."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        if fd is not None:
            _HELD.add(fd)

    @property
    def held(self) -> bool:
        """False where the file system could not lock (the command then runs unlocked)."""
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            _HELD.discard(fd)
            os.close(fd)  # closing the only descriptor of the lock releases it


def lock_run_dir(root: Path, what: str, hint: str) -> RunLock:
    """Take the exclusive lock of the existing folder ``root`` without waiting.

    Args:
        root: the run folder.
        what: how the message names the folder, e.g. ``"--out 'runs/a'"``.
        hint: what the user should do instead, ending the message.

    Raises:
        ConfigError: another process (or another command of this one) holds the lock.
        OSError: the folder cannot be opened.
    """
    if fcntl is None:
        return RunLock(None)
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"{what} {_BUSY}; {hint}") from None
        return RunLock(None)  # ENOLCK, EOPNOTSUPP...: no locking on this file system
    return RunLock(fd)


@contextmanager
def run_lock(root: Path, hint: str = "wait for it to finish") -> Iterator[RunLock]:
    """Hold the lock of the existing run folder ``root`` for the block (``export`` while it writes).

    Raises:
        ConfigError: a ``prune``, ``resume`` or ``export`` of this folder is running; or it cannot be opened.
    """
    try:
        lock = lock_run_dir(Path(root), f"run folder {str(root)!r}", hint)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(f"run folder {str(root)!r} cannot be opened: {reason}") from exc
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def claim_run_dir(root: Path, *, resume: bool, overwrite: bool) -> Iterator[RunDir]:
    """:func:`prepare_run_dir` under the folder's lock, held until the block ends (``prune`` and ``resume``).

    A new folder is created first so that it can be locked; the checks (occupied, resumable, overwritable)
    then run under the lock, so two commands racing for one ``--out`` cannot both pass them: the second is
    refused and writes nothing.

    Raises:
        ConfigError: another command holds the folder, or :func:`prepare_run_dir` refuses it.
    """
    root = Path(root)
    lock = RunLock(None)
    try:
        if not resume and not root.exists() and not root.is_symlink():
            root.mkdir(parents=True, exist_ok=True)
        if root.is_dir():
            lock = lock_run_dir(root, f"--out {str(root)!r}", "wait for it to finish, or pass another --out")
    except OSError as exc:
        raise _unusable(root, exc) from exc
    try:
        yield prepare_run_dir(root, resume=resume, overwrite=overwrite)
    finally:
        lock.release()


def _prepare_run_dir(run: RunDir, *, resume: bool, overwrite: bool) -> RunDir:
    root = run.root
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {str(root)!r} is a file; pass a folder path")
    occupied = run.root.is_dir() and any(run.root.iterdir())
    if resume:
        if not run.is_run():
            raise ConfigError(f"--resume: {str(root)!r} holds no run to resume (no config.json)")
        remove_stale_temps(run)
        return run
    if occupied and not overwrite:
        raise ConfigError(
            f"--out {str(root)!r} already holds files; pass --resume to continue that run, --overwrite to "
            "replace it, or another --out"
        )
    if occupied and overwrite:
        if not run.is_run():
            raise ConfigError(f"--overwrite refuses {str(root)!r}: it is not an adapmtl run folder")
        states = (run.state, run.prev_state, sidecar(run.state), sidecar(run.prev_state))
        for p in (run.metrics, *states, run.report, run.weights, run.dense_metrics):
            if p.exists():
                p.unlink()
        remove_stale_temps(run)
    run.root.mkdir(parents=True, exist_ok=True)
    # Probe now: a read-only folder fails here with its name, before any work is done.
    fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=run.root)
    os.close(fd)
    os.unlink(probe)
    return run

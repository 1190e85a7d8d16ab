"""Match a model's raw outputs (dict, tuple, list, nested) to the dataset's tasks.

Three ways, tried in order: positional names given by the user (``--outputs seg,depth,normal``, ``_`` skips a
leaf), dictionary keys that are task names or aliases (``semantic``, ``depth_zbuffer``, ``sn`` ...), and channel
counts when each task's count picks exactly one output. Anything else is a one-line error that lists what the
model returned, so the user knows which ``--outputs`` to pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from adapmtl_cli.errors import DiscoveryError
from adapmtl_cli.tasks import match_task


class OutputTask(Protocol):
    """What output matching needs of a task: its name and, when known, its output's channel count."""

    @property
    def name(self) -> str: ...

    @property
    def channels(self) -> int | None: ...


Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Leaf:
    """One tensor in the model's output structure."""

    path: Path_
    shape: tuple[int, ...]

    @property
    def label(self) -> str:
        return ".".join(str(p) for p in self.path) or "<output>"


@dataclass(frozen=True)
class OutputMapping:
    """``task -> path`` into the output structure; ``select`` applies it."""

    paths: dict[str, Path_]
    how: str

    def select(self, raw: Any) -> dict[str, torch.Tensor]:
        out = {}
        for task, path in self.paths.items():
            node = raw
            for key in path:
                node = node[key]
            out[task] = node
        return out

    def describe(self) -> dict[str, str]:
        return {task: ".".join(str(p) for p in path) or "<output>" for task, path in self.paths.items()}


def flatten_outputs(raw: Any, batch: int) -> list[Leaf]:
    """Every tensor leaf of ``raw`` with its path; raises when the structure holds no usable tensor."""
    leaves: list[Leaf] = []

    def walk(node: Any, path: Path_) -> None:
        if isinstance(node, torch.Tensor):
            leaves.append(Leaf(path, tuple(node.shape)))
        elif isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(raw, ())
    if not leaves:
        raise DiscoveryError(
            f"the model returned {type(raw).__name__}, which holds no tensor; forward must return a dict or "
            "tuple of per-task tensors"
        )
    return leaves


def _summary(leaves: list[Leaf]) -> str:
    return ", ".join(f"{leaf.label}: {tuple(leaf.shape)}" for leaf in leaves)


def _need(tasks: Sequence[OutputTask]) -> str:
    return ", ".join(f"{t.name} ({t.channels} ch)" if t.channels is not None else t.name for t in tasks)


def map_outputs(raw: Any, tasks: Sequence[OutputTask], batch: int, names: Sequence[str] | None = None) -> OutputMapping:
    """Decide which output feeds which task.

    Args:
        raw: the model's output on one batch.
        tasks: the dataset's tasks.
        batch: the batch size of the probe input (leaves with another leading size are ignored).
        names: ``--outputs`` values, one per positional leaf in order (``_`` skips one).

    Raises:
        DiscoveryError: no unambiguous mapping exists, or a mapped tensor has the wrong channel count.
    """
    leaves = [leaf for leaf in flatten_outputs(raw, batch) if len(leaf.shape) >= 2 and leaf.shape[0] == batch]
    if not leaves:
        raise DiscoveryError(
            f"no model output has batch size {batch} (outputs: {_summary(flatten_outputs(raw, batch))}); "
            "forward must return one (B, C, H, W) tensor per task"
        )
    by_name = {t.name: t for t in tasks}
    paths: dict[str, Path_] = {}
    if names:
        if len(names) > len(leaves):
            raise DiscoveryError(
                f"--outputs names {len(names)} outputs but the model returned {len(leaves)} ({_summary(leaves)})"
            )
        for name, leaf in zip(names, leaves, strict=False):
            if name in ("_", ""):
                continue
            task = match_task(name, list(by_name))
            if task is None:
                raise DiscoveryError(f"--outputs names {name!r}, which is not a task of this dataset ({_need(tasks)})")
            if task in paths:
                raise DiscoveryError(f"--outputs names task {task!r} twice; give each task one output ('_' skips one)")
            paths[task] = leaf.path
        how = "--outputs"
    else:
        for leaf in leaves:
            last = leaf.path[-1] if leaf.path else None
            task = match_task(last, list(by_name)) if isinstance(last, str) else None
            if task in by_name and task not in paths:
                paths[task] = leaf.path
        by_names = len(paths)
        missing = [t for t in tasks if t.name not in paths]
        free = [leaf for leaf in leaves if leaf.path not in paths.values()]
        for t in missing:
            if t.channels is None:
                continue
            fits = [leaf for leaf in free if leaf.shape[1] == t.channels]
            others = [u for u in missing if u is not t and u.channels == t.channels]
            if len(fits) == 1 and not others:
                paths[t.name] = fits[0].path
        by_channels = len(paths) - by_names
        how = "+".join(w for w, n in (("names", by_names), ("channels", by_channels)) if n) or "none"
    unmatched = [t.name for t in tasks if t.name not in paths]
    if unmatched:
        raise DiscoveryError(
            f"cannot tell which output is task {', '.join(map(repr, unmatched))}: the model returned "
            f"{_summary(leaves)} and the tasks need {_need(tasks)}; pass --outputs with one task name per "
            "output in order ('_' skips one; outputs=[...] in the API), or use --tasks to prune for fewer tasks"
        )
    for t in tasks:
        leaf = next(leaf for leaf in leaves if leaf.path == paths[t.name])
        if t.channels is not None and leaf.shape[1] != t.channels:
            raise DiscoveryError(
                f"output {leaf.label} {leaf.shape} was mapped to task {t.name!r}, which needs {t.channels} "
                "channels; check --outputs or the model's head sizes"
            )
    return OutputMapping(paths={t.name: paths[t.name] for t in tasks}, how=how)

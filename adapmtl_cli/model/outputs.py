"""Match a model's raw outputs (dict, tuple, list, nested) to the dataset's tasks.

Three ways, tried in order:

1. ``--outputs`` as given: ``TASK=KEY`` or ``TASK=DOTTED.PATH`` entries (``segmentation=semseg``,
   ``depth=deep_supervision.scale_0.depth``; a mapping in the API), each pinning one task; or one task name per
   positional leaf in order (``--outputs seg,depth,normal``, ``_`` skips a leaf). Tasks the entries leave out are
   matched as below, among the leaves no entry took.
2. Dictionary keys that are task names or aliases (``semantic``, ``depth_zbuffer``, ``sn`` ...). A key may occur
   at several depths (deep supervision: ``{"semseg": final, "aux": {"scale_0": {"semseg": ...}}}``): the
   shallowest leaf wins, and two at that same depth are refused with their paths, never picked silently.
3. Channel counts, when each task's count picks exactly one output.

Anything else is a one-line error that lists what the model returned, so the user knows which ``--outputs`` to
pass. A ``KEY`` or path names a leaf by its path (``a.0.b``: keys and indices joined by dots), by its last
key, or by any trailing part of its path; when several leaves fit, the shallowest one is taken, and a tie at
that depth is refused.
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


Names = Sequence[str] | Mapping[str, str]
"""What ``--outputs`` (or ``outputs=`` in the API) gives: positional names, ``TASK=PATH`` entries, or a mapping."""


def _shallowest(found: list[Leaf], what: str, hint: str) -> Leaf:
    """The one shallowest leaf of ``found``; a tie at that depth is a ``DiscoveryError`` listing the paths."""
    depth = min(len(leaf.path) for leaf in found)
    best = [leaf for leaf in found if len(leaf.path) == depth]
    if len(best) > 1:
        paths = ", ".join(leaf.label for leaf in best)
        raise DiscoveryError(f"{what} matches {len(best)} outputs at the same depth ({paths}); {hint}")
    return best[0]


def _named_entries(names: Names) -> list[tuple[str, str]] | None:
    """``(task, reference)`` pairs of the named form, or None for the positional form."""
    if isinstance(names, Mapping):
        return [(str(k), str(v)) for k, v in names.items()]
    named = [n for n in names if "=" in n]
    if not named:
        return None
    if len(named) != len(names):
        plain = next(n for n in names if "=" not in n)
        raise DiscoveryError(
            f"--outputs mixes TASK=PATH entries with the positional name {plain!r}; use one form "
            "(segmentation=semseg,depth=depth or seg,depth,normal)"
        )
    pairs = [n.split("=", 1) for n in named]
    return [(task.strip(), ref.strip()) for task, ref in pairs]


def _by_reference(entries: list[tuple[str, str]], leaves: list[Leaf], tasks: Sequence[OutputTask]) -> dict[str, Path_]:
    """The leaves the ``TASK=PATH`` entries pin (see the module docstring for how a path names a leaf)."""
    task_names = [t.name for t in tasks]
    paths: dict[str, Path_] = {}
    for given, ref in entries:
        task = match_task(given, task_names)
        if task is None:
            raise DiscoveryError(f"--outputs names {given!r}, which is not a task of this dataset ({_need(tasks)})")
        if task in paths:
            raise DiscoveryError(f"--outputs names task {task!r} twice; give each task one output")
        if not ref:
            raise DiscoveryError(f"--outputs {given}= names no output; write {given}=KEY or {given}=a.b.c")
        found = [leaf for leaf in leaves if leaf.label == ref or leaf.label.endswith("." + ref)]
        if not found:
            raise DiscoveryError(
                f"--outputs {given}={ref!r} matches no model output (outputs: {_summary(leaves)}); give a key or a "
                "dotted path from that list"
            )
        leaf = _shallowest(found, f"--outputs {given}={ref!r}", "give a longer dotted path that names one of them")
        other = next((t for t, p in paths.items() if p == leaf.path), None)
        if other is not None:
            raise DiscoveryError(
                f"--outputs gives output {leaf.label} to tasks {other!r} and {task!r}; give each task its own output"
            )
        paths[task] = leaf.path
    return paths


def _by_position(names: Sequence[str], leaves: list[Leaf], tasks: Sequence[OutputTask]) -> dict[str, Path_]:
    """The positional form: one task name per leaf in order, ``_`` skips one."""
    task_names = [t.name for t in tasks]
    if len(names) > len(leaves):
        raise DiscoveryError(
            f"--outputs names {len(names)} outputs but the model returned {len(leaves)} ({_summary(leaves)})"
        )
    paths: dict[str, Path_] = {}
    for name, leaf in zip(names, leaves, strict=False):
        if name in ("_", ""):
            continue
        task = match_task(name, task_names)
        if task is None:
            raise DiscoveryError(f"--outputs names {name!r}, which is not a task of this dataset ({_need(tasks)})")
        if task in paths:
            raise DiscoveryError(f"--outputs names task {task!r} twice; give each task one output ('_' skips one)")
        paths[task] = leaf.path
    return paths


def _by_keys(leaves: list[Leaf], missing: Sequence[OutputTask]) -> dict[str, Path_]:
    """Leaves whose last key names a task (or an alias of one): the shallowest per task, ties refused."""
    found: dict[str, list[Leaf]] = {}
    names = [t.name for t in missing]
    for leaf in leaves:
        last = leaf.path[-1] if leaf.path else None
        task = match_task(last, names) if isinstance(last, str) else None
        if task is not None:
            found.setdefault(task, []).append(leaf)
    paths = {}
    for task, candidates in found.items():
        hint = f"pass --outputs {task}=PATH with the one to use (e.g. --outputs {task}={candidates[0].label})"
        paths[task] = _shallowest(candidates, f"task {task!r}", hint).path
    return paths


def _by_channels(leaves: list[Leaf], missing: Sequence[OutputTask]) -> dict[str, Path_]:
    """Tasks whose channel count picks exactly one leaf (and no other missing task has that count)."""
    paths = {}
    for t in missing:
        if t.channels is None:
            continue
        fits = [leaf for leaf in leaves if leaf.shape[1] == t.channels]
        others = [u for u in missing if u is not t and u.channels == t.channels]
        if len(fits) == 1 and not others:
            paths[t.name] = fits[0].path
    return paths


def map_outputs(raw: Any, tasks: Sequence[OutputTask], batch: int, names: Names | None = None) -> OutputMapping:
    """Decide which output feeds which task.

    Args:
        raw: the model's output on one batch.
        tasks: the dataset's tasks.
        batch: the batch size of the probe input (leaves with another leading size are ignored).
        names: ``--outputs`` values: ``TASK=PATH`` entries (or a ``{task: path}`` mapping), or one task name per
            positional leaf in order (``_`` skips one).

    Raises:
        DiscoveryError: no unambiguous mapping exists, or a mapped tensor has the wrong channel count.
    """
    leaves = [leaf for leaf in flatten_outputs(raw, batch) if len(leaf.shape) >= 2 and leaf.shape[0] == batch]
    if not leaves:
        raise DiscoveryError(
            f"no model output has batch size {batch} (outputs: {_summary(flatten_outputs(raw, batch))}); "
            "forward must return one (B, C, H, W) tensor per task"
        )
    entries = _named_entries(names) if names else None
    if names and entries is None:
        paths, how = _by_position(list(names), leaves, tasks), "--outputs"
    else:
        paths = _by_reference(entries, leaves, tasks) if entries else {}
        steps = [("--outputs", len(paths))]
        for label, rule in (("names", _by_keys), ("channels", _by_channels)):
            free = [leaf for leaf in leaves if leaf.path not in paths.values()]
            found = rule(free, [t for t in tasks if t.name not in paths])
            paths.update(found)
            steps.append((label, len(found)))
        how = "+".join(w for w, n in steps if n) or "none"
    unmatched = [t.name for t in tasks if t.name not in paths]
    if unmatched:
        raise DiscoveryError(
            f"cannot tell which output is task {', '.join(map(repr, unmatched))}: the model returned "
            f"{_summary(leaves)} and the tasks need {_need(tasks)}; pass --outputs TASK=PATH per task "
            "(segmentation=semseg,depth=out.depth) or one task name per output in order ('_' skips one; "
            "outputs=[...] or {task: path} in the API), or use --tasks to prune for fewer tasks"
        )
    for t in tasks:
        leaf = next(leaf for leaf in leaves if leaf.path == paths[t.name])
        if t.channels is not None and leaf.shape[1] != t.channels:
            raise DiscoveryError(
                f"output {leaf.label} {leaf.shape} was mapped to task {t.name!r}, which needs {t.channels} "
                "channels; check --outputs or the model's head sizes"
            )
    return OutputMapping(paths={t.name: paths[t.name] for t in tasks}, how=how)

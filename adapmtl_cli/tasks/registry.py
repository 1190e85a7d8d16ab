"""The task-kind registry: factories by name, and the aliases users and models use for them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import TaskSpec

TASKS: dict[str, Callable[..., TaskSpec]] = {}
"""Kind name -> factory; filled by the kind modules that ``adapmtl_cli.tasks`` imports."""

# Names seen in the wild (MTAN, LibMTL, AdaShare, Taskonomy, user code) -> canonical registry key.
ALIASES: dict[str, str] = {
    "seg": "segmentation",
    "segmentation": "segmentation",
    "semantic": "segmentation",
    "semseg": "segmentation",
    "segment_semantic": "segmentation",
    "label": "segmentation",
    "depth": "depth",
    "depth_zbuffer": "depth",
    "normal": "normal",
    "normals": "normal",
    "surface_normal": "normal",
    "surface_normals": "normal",
    "sn": "normal",
    "classification": "classification",
    "multilabel": "multilabel",
    "regression": "regression",
    "keypoints": "keypoints",
    "keypoint": "keypoints",
    "keypoints2d": "keypoints",
    "edges": "edges",
    "edge": "edges",
    "edge_texture": "edges",
}


def register_task(name: str) -> Callable[[Callable[..., TaskSpec]], Callable[..., TaskSpec]]:
    """Register a task factory under ``name``; registering a name twice is a bug."""

    def wrap(factory: Callable[..., TaskSpec]) -> Callable[..., TaskSpec]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = factory
        return factory

    return wrap


def canonical_task_name(name: str) -> str | None:
    """The registry key for a task name or alias (case-insensitive), or None when unknown."""
    return ALIASES.get(name.strip().lower().replace("-", "_"))


def match_task(name: str, task_names: Sequence[str]) -> str | None:
    """Which of ``task_names`` the user or model name ``name`` means: an exact (case-insensitive) match first,
    then an alias of a built-in kind (``seg`` -> ``segmentation``); None when neither applies."""
    folded = name.strip().lower()
    for task in task_names:
        if task.lower() == folded:
            return task
    canon = canonical_task_name(name)
    return canon if canon in task_names else None


def get_task(name: str, /, **kwargs: Any) -> TaskSpec:
    """Build the task registered as ``name`` (aliases accepted)."""
    key = canonical_task_name(name)
    if key is None or key not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key](**kwargs)

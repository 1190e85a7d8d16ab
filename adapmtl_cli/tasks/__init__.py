"""Task kinds (segmentation, depth, normal, ...): the registry, the task contract, and the built-in kinds.

Importing this package registers the built-in kinds: each kind module registers its own with
:func:`~adapmtl_cli.tasks.registry.register_task`, so the registry never imports a kind.
"""

from __future__ import annotations

from adapmtl_cli.tasks import classification, dense_regression, depth, normal, segmentation  # noqa: F401  (registration)
from adapmtl_cli.tasks.base import MetricMeter, MetricSpec, TaskSpec
from adapmtl_cli.tasks.registry import ALIASES, TASKS, canonical_task_name, get_task, match_task, register_task

__all__ = [
    "ALIASES",
    "TASKS",
    "MetricMeter",
    "MetricSpec",
    "TaskSpec",
    "canonical_task_name",
    "get_task",
    "match_task",
    "register_task",
]

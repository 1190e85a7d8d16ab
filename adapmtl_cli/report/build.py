"""The run's ``report.json``: where the sparsity went (per component and layer) and what it cost each task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from adapmtl_cli.config import ChannelReport, DeltaTEntry, PruneConfig, RunReport, ScoreEntry, TaskMetrics
from adapmtl_cli.report.chance import chance_warnings
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.tasks.scores import SCORE_CONVENTIONS, collapse, delta_m, delta_p, delta_t, delta_t_bounded

if TYPE_CHECKING:  # the report reads a finished ``Pruning``; the stage that prunes sits above this one
    from adapmtl_cli.api import Pruning

Metrics = dict[str, dict[str, float]]


def build_report(
    cfg: PruneConfig,
    pruning: Pruning,
    tasks: Sequence[TaskSpec],
    dense: Metrics,
    pruned: Metrics,
    *,
    task_weights: Mapping[str, float],
    wall: float,
    diagnostics: Mapping[str, Mapping[str, float]] | None = None,
    chance: Metrics | None = None,
) -> RunReport:
    """The report of a finished run (``pruning`` finalized; ``task_weights``: those of the last step).

    ``diagnostics`` are the pruned model's meter diagnostics per task (the evaluation's), which the collapse check
    reads; without them only the error metrics are checked. ``chance``: every task's metrics for its best constant
    prediction on the same split (``report.chance``); a task the dense model does not beat it on gets a warning.
    """
    parts = pruning.report()
    specs = {t.name: t for t in tasks}
    dt = delta_t(dense, pruned, specs)
    collapsed = collapse(dense, pruned, specs, diagnostics)
    warnings = []
    unreached = pruning.discovery.cmap.unreached
    if unreached:
        warnings.append(f"{len(unreached)} modules are reached by no task and were not pruned")
    warnings += [f"task {task} collapsed: {'; '.join(why)}" for task, why in collapsed.reasons.items()]
    warnings += chance_warnings(dense, chance, specs)
    return RunReport(
        method=cfg.method,
        weighting=parts["weighting"],
        layer_scale=parts["layer_scale"],
        allocation=parts["allocation"],
        settle=parts["settle"],
        target_sparsity=cfg.sparsity,
        overall_sparsity=parts["overall_sparsity"],
        prunable_params=parts["prunable_params"],
        zeros=parts["zeros"],
        steps=cfg.steps,
        wall_seconds=wall,
        components=pruning.component_sparsity(),
        layers=pruning.layer_sparsity(),
        tasks={
            name: TaskMetrics(
                dense=dense[name],
                pruned=pruned[name],
                higher_is_better={m.name: m.higher_is_better for m in specs[name].metrics},
            )
            for name in specs
        },
        delta_t=DeltaTEntry(
            per_task=dt.per_task, overall=dt.overall, convention=dt.convention, skipped=list(dt.skipped)
        ),
        scores=other_scores(dense, pruned, specs),
        collapsed=collapsed.per_task,
        task_weights=dict(task_weights),
        warnings=warnings,
        structure=parts["structure"],
        channels=ChannelReport.model_validate(parts["channels"]) if parts.get("channels") else None,
    )


def other_scores(dense: Any, pruned: Any, specs: dict[str, TaskSpec]) -> dict[str, ScoreEntry]:
    """The bounded Δ_T, Δm and Δ_p of the pruned metrics against the dense ones, each with its convention."""
    dp = delta_p(dense, pruned, specs)
    bounded = delta_t_bounded(dense, pruned, specs)
    return {
        "delta_t_bounded": ScoreEntry(
            overall=bounded.overall,
            per_task=bounded.per_task,
            higher_is_better=SCORE_CONVENTIONS["delta_t_bounded"].higher_is_better,
            convention=SCORE_CONVENTIONS["delta_t_bounded"].text,
        ),
        "delta_m": ScoreEntry(
            overall=delta_m(dense, pruned, specs),
            higher_is_better=SCORE_CONVENTIONS["delta_m"].higher_is_better,
            convention=SCORE_CONVENTIONS["delta_m"].text,
        ),
        "delta_p": ScoreEntry(
            overall=dp.overall,
            per_task=dp.per_task,
            higher_is_better=SCORE_CONVENTIONS["delta_p"].higher_is_better,
            convention=SCORE_CONVENTIONS["delta_p"].text,
        ),
    }

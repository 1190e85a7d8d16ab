"""Relative multitask scores: how a pruned model's metrics compare with its dense baseline's.

With ``B`` the dense metric, ``N`` the pruned one and ``s = +1`` for a higher-is-better metric (else ``-1``):

- Δ_T (AdapMTL, Table 2 of the paper): per task ``Δ_Ti = Σ_j s_j (N_ij - B_ij) / B_ij × 100``, **summed** (not
  averaged) over the task's metrics; ``Δ_T`` = mean of ``Δ_Ti`` over tasks. Positive = better than dense.
  Checked against the paper's table: seg (19.94, 48.71) -> (20.16, 49.14) gives Δ_T1 = 1.99.
- Δm (CAGrad / Nash-MTL / FAMO): ``-mean_k s_k (N_k - B_k) / B_k × 100`` flat over all metrics of all tasks.
  Negative = better than dense (it is a drop).
- Δ_p (LibMTL ``count_improvement``): per task ``Δ_pi = mean_j s_j (N_ij - B_ij) / B_ij``, **averaged** over the
  task's metrics (AdaShare's Δ_T, as a fraction); ``Δ_p`` = mean of ``Δ_pi`` over tasks. Positive = better.
- bounded Δ_T (ours): Δ_T with each metric's signed change ``s_j (N_ij - B_ij) / B_ij × 100`` clipped to
  [-100, +100] before the same per-task sums and task mean. One metric whose dense value is near 0 makes Δ_T
  unbounded (a row at -21,838); clipped, each metric moves the score by at most 100 points, so a task with
  ``M_i`` metrics stays within ``±100 M_i``. Equal to Δ_T while no change exceeds 100 %.

Beside the scores, :func:`collapse` flags a task whose pruned model has collapsed, which a mean can hide: an error
metric (lower is better) above :data:`COLLAPSE_ERROR_FACTOR` (3) × its dense value, or a classifying task whose
meter saw a single class predicted over the whole split while the labels hold several (the meters'
``diagnostics()``, which are not metrics: see ``tasks.base``).

:data:`SCORE_CONVENTIONS` describes each score (sign, averaging, unit, baseline) for renderers.

A metric whose dense value is 0 (or not finite) has no relative change; every score skips it, and Δ_T lists it
in ``skipped`` as ``"task.metric"``. A task with every metric skipped is left out of the task mean.
The metrics compared are those of the dense baseline; the pruned side must report each of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import LABEL_CLASSES, PREDICTED_CLASSES, TaskSpec

DELTA_T_CONVENTION = (
    "Δ_T (AdapMTL): per task, sum over its metrics of ±(pruned − dense)/dense × 100 (+ when the metric "
    "improves), then the mean over tasks; higher is better, 0 = same as dense"
)
DELTA_M_CONVENTION = (
    "Δm (CAGrad): mean over all metrics of ∓(pruned − dense)/dense × 100 (− when the metric improves); "
    "lower is better, 0 = same as dense"
)

DELTA_P_CONVENTION = (
    "Δ_p (LibMTL count_improvement): per task, mean over its metrics of ±(pruned − dense)/dense (+ when the "
    "metric improves), then the mean over tasks, as a fraction; higher is better, 0 = same as dense"
)

DELTA_T_BOUNDED_CONVENTION = (
    "bounded Δ_T: Δ_T with each metric's ±(pruned − dense)/dense × 100 (+ when the metric improves) clipped to "
    "[−100, +100] first, then the same sum per task and mean over tasks; higher is better, 0 = same as dense"
)
BOUNDED_CHANGE = 100.0
"""The bounded Δ_T clips each metric's signed relative change to ``[-BOUNDED_CHANGE, +BOUNDED_CHANGE]`` percent."""

COLLAPSE_ERROR_FACTOR = 3.0
"""An error metric (lower is better) above this many times its dense value marks the task collapsed."""
COLLAPSE_CONVENTION = (
    "a task collapses when an error metric (lower is better) is above 3× its dense value, or when one class is "
    "predicted over the whole split while the labels hold several"
)

Metrics = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class ScoreConvention:
    """How one relative score is defined, for renderers to print next to it.

    Attributes:
        symbol: how reports write the score (``"Δ_T"``).
        higher_is_better: whether a larger score means the pruned model did better.
        averaging: how the signed relative changes of the metrics are combined.
        unit: ``"percent"`` or ``"fraction"``.
        baseline: what the changes are relative to.
        source: where the definition comes from.
        text: the one-line summary (the ``*_CONVENTION`` string).
    """

    symbol: str
    higher_is_better: bool
    averaging: str
    unit: str
    baseline: str
    source: str
    text: str


_BASELINE = "the dense model's metrics (each change is relative to the dense value; dense 0 is skipped)"
SCORE_CONVENTIONS: dict[str, ScoreConvention] = {
    "delta_t": ScoreConvention(
        "Δ_T", True, "sum over each task's metrics, then mean over tasks", "percent", _BASELINE,
        "AdapMTL (Table 2 of the paper)", DELTA_T_CONVENTION,
    ),
    "delta_m": ScoreConvention(
        "Δm", False, "flat mean over all metrics of all tasks", "percent", _BASELINE,
        "CAGrad / Nash-MTL / FAMO", DELTA_M_CONVENTION,
    ),
    "delta_p": ScoreConvention(
        "Δ_p", True, "mean over each task's metrics, then mean over tasks", "fraction", _BASELINE,
        "LibMTL count_improvement (AdaShare's Δ_T without the × 100)", DELTA_P_CONVENTION,
    ),
    "delta_t_bounded": ScoreConvention(
        "bounded Δ_T", True,
        "each metric's change clipped to ±100 %, then sum over each task's metrics, then mean over tasks",
        "percent", _BASELINE, "adapmtl (Δ_T made robust to a metric whose dense value is near 0)",
        DELTA_T_BOUNDED_CONVENTION,
    ),
}  # fmt: skip
"""Score function name -> its convention."""


@dataclass(frozen=True)
class DeltaT:
    """Δ_T of a pruned model against its dense baseline.

    Attributes:
        per_task: Δ_Ti per task (percent points, summed over the task's metrics); tasks whose metrics were
            all skipped are absent.
        overall: mean of ``per_task``; NaN when no metric could be compared at all.
        convention: one line stating the formula and sign, for reports.
        skipped: ``"task.metric"`` entries left out because the dense value is 0 or not finite.
    """

    per_task: dict[str, float]
    overall: float
    convention: str
    skipped: tuple[str, ...] = ()


def _improvements(
    dense: Metrics, pruned: Metrics, specs: Mapping[str, TaskSpec]
) -> tuple[dict[str, list[float]], list[str]]:
    """Signed relative change in percent (+ = better) per task and metric, and the skipped metrics."""
    problems: list[str] = []
    changes: dict[str, list[float]] = {}
    skipped: list[str] = []
    for task, dense_metrics in dense.items():
        if task not in specs:
            problems.append(f"dense metrics name unknown task {task!r}")
            continue
        if task not in pruned:
            problems.append(f"pruned metrics lack task {task!r}")
            continue
        better_up = {m.name: m.higher_is_better for m in specs[task].metrics}
        for metric, base in dense_metrics.items():
            if metric not in better_up:
                problems.append(f"task {task!r} has no metric {metric!r} (known: {', '.join(better_up)})")
            elif metric not in pruned[task]:
                problems.append(f"pruned metrics lack {task}.{metric}")
            elif base == 0 or not math.isfinite(base):
                skipped.append(f"{task}.{metric}")
            else:
                sign = 1.0 if better_up[metric] else -1.0
                changes.setdefault(task, []).append(sign * (pruned[task][metric] - base) / base * 100.0)
    if problems:
        raise ConfigError("cannot compare metrics: " + "; ".join(problems))
    return changes, skipped


def delta_t(dense: Metrics, pruned: Metrics, specs: Mapping[str, TaskSpec]) -> DeltaT:
    """AdapMTL's Δ_T of ``pruned`` against ``dense`` (``{task: {metric: value}}``); higher is better.

    Raises:
        ConfigError: a task or metric of ``dense`` is unknown to ``specs`` or missing from ``pruned``.
    """
    changes, skipped = _improvements(dense, pruned, specs)
    per_task = {task: sum(values) for task, values in changes.items()}
    overall = sum(per_task.values()) / len(per_task) if per_task else math.nan
    return DeltaT(per_task=per_task, overall=overall, convention=DELTA_T_CONVENTION, skipped=tuple(skipped))


def delta_m(dense: Metrics, pruned: Metrics, specs: Mapping[str, TaskSpec]) -> float:
    """CAGrad's Δm% of ``pruned`` against ``dense``, flat over all metrics; lower is better, NaN if none.

    Raises:
        ConfigError: a task or metric of ``dense`` is unknown to ``specs`` or missing from ``pruned``.
    """
    changes, _ = _improvements(dense, pruned, specs)
    flat = [value for values in changes.values() for value in values]
    return -sum(flat) / len(flat) if flat else math.nan


DeltaP = DeltaT
"""Δ_p has Δ_T's fields: ``per_task`` (a fraction, averaged over the task's metrics), ``overall``, ``convention``,
``skipped``."""


def delta_p(dense: Metrics, pruned: Metrics, specs: Mapping[str, TaskSpec]) -> DeltaP:
    """LibMTL's Δ_p of ``pruned`` against ``dense`` (``{task: {metric: value}}``) as a fraction; higher is better.

    Raises:
        ConfigError: a task or metric of ``dense`` is unknown to ``specs`` or missing from ``pruned``.
    """
    changes, skipped = _improvements(dense, pruned, specs)
    per_task = {task: sum(values) / len(values) / 100.0 for task, values in changes.items()}
    overall = sum(per_task.values()) / len(per_task) if per_task else math.nan
    return DeltaP(per_task=per_task, overall=overall, convention=DELTA_P_CONVENTION, skipped=tuple(skipped))


def _clip(change: float) -> float:
    """``change`` clipped to ±:data:`BOUNDED_CHANGE`; NaN stays NaN (no side can claim it)."""
    return change if math.isnan(change) else max(-BOUNDED_CHANGE, min(BOUNDED_CHANGE, change))


def delta_t_bounded(dense: Metrics, pruned: Metrics, specs: Mapping[str, TaskSpec]) -> DeltaT:
    """Δ_T with each metric's signed relative change clipped to [-100, +100] percent; higher is better.

    Same skipped metrics, per-task sums and task mean as :func:`delta_t`; equal to it while every change is
    within ±100 %, and within ``±100 × (metrics of the task)`` per task whatever the metrics are.

    Raises:
        ConfigError: a task or metric of ``dense`` is unknown to ``specs`` or missing from ``pruned``.
    """
    changes, skipped = _improvements(dense, pruned, specs)
    per_task = {task: sum(_clip(v) for v in values) for task, values in changes.items()}
    overall = sum(per_task.values()) / len(per_task) if per_task else math.nan
    return DeltaT(per_task=per_task, overall=overall, convention=DELTA_T_BOUNDED_CONVENTION, skipped=tuple(skipped))


@dataclass(frozen=True)
class Collapse:
    """Which tasks of a pruned model collapsed, and why.

    Attributes:
        per_task: every task of the dense metrics -> whether it collapsed.
        reasons: the collapsed tasks only -> one line per cause (``"abs_err 0.93 > 3 × dense 0.21"``).
        convention: the rule, for reports (:data:`COLLAPSE_CONVENTION`).
    """

    per_task: dict[str, bool]
    reasons: dict[str, tuple[str, ...]]
    convention: str = COLLAPSE_CONVENTION


def _error_blowups(dense: Mapping[str, float], pruned: Mapping[str, float], spec: TaskSpec) -> list[str]:
    """The task's error metrics (lower is better) that the pruned model has above 3× their dense value.

    A dense value that is not a positive finite number has no such ratio and is not checked; a pruned value that
    is not finite where the dense one is counts as a blow-up.
    """
    out = []
    for m in spec.metrics:
        if m.higher_is_better or m.name not in dense or m.name not in pruned:
            continue
        base, value = dense[m.name], pruned[m.name]
        if not (math.isfinite(base) and base > 0):
            continue
        if not math.isfinite(value) or value > COLLAPSE_ERROR_FACTOR * base:
            out.append(f"{m.name} {value:.4g} > {COLLAPSE_ERROR_FACTOR:g} × dense {base:.4g}")
    return out


def _single_class(diagnostics: Mapping[str, float]) -> list[str]:
    """One line when the meter saw a single class predicted while the labels hold several.

    A meter that reports no :data:`LABEL_CLASSES` is taken to have several classes in its labels.
    """
    predicted = diagnostics.get(PREDICTED_CLASSES)
    labelled = diagnostics.get(LABEL_CLASSES, math.inf)
    if predicted != 1 or labelled <= 1:
        return []
    held = f" while the labels hold {labelled:g}" if math.isfinite(labelled) else ""
    return [f"predicts a single class over the whole split{held}"]


def collapse(
    dense: Metrics,
    pruned: Metrics,
    specs: Mapping[str, TaskSpec],
    diagnostics: Mapping[str, Mapping[str, float]] | None = None,
) -> Collapse:
    """Flag each task of ``dense`` whose pruned model collapsed (:data:`COLLAPSE_CONVENTION`).

    ``diagnostics`` are the pruned model's meter diagnostics per task (``{task: {PREDICTED_CLASSES: n, ...}}``);
    a task without them is checked on its error metrics alone.

    Raises:
        ConfigError: a task or metric of ``dense`` is unknown to ``specs`` or missing from ``pruned`` (as Δ_T).
    """
    _improvements(dense, pruned, specs)  # the same checks, the same message as every score
    diagnostics = diagnostics or {}
    per_task: dict[str, bool] = {}
    reasons: dict[str, tuple[str, ...]] = {}
    for task, dense_metrics in dense.items():
        found = _error_blowups(dense_metrics, pruned[task], specs[task])
        found += _single_class(diagnostics.get(task, {}))
        per_task[task] = bool(found)
        if found:
            reasons[task] = tuple(found)
    return Collapse(per_task=per_task, reasons=reasons)

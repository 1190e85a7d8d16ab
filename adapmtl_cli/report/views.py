"""The numbers every report format shares: loaded runs, layer order, comparison rows and value formatting.

Each renderer (rich table, Markdown, CSV, HTML, plots) reads from here, so the formats cannot drift apart: a
value is taken from ``report.json`` once and formatted by one function per kind. Comparison rows carry the
direction in which a value is better, so every format highlights the same best value per row.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from adapmtl_cli.config import LayerSparsity, PruneConfig, RunReport, ScoreEntry
from adapmtl_cli.errors import AdapmtlError, ConfigError
from adapmtl_cli.files.atomic import atomic_write, read_jsonl, read_model
from adapmtl_cli.files.rundir import RunDir
from adapmtl_cli.tasks.scores import COLLAPSE_CONVENTION, SCORE_CONVENTIONS

FORMATS = ("table", "json", "markdown", "csv", "html")
SORTS = ("model", "sparsity", "params", "name")
SUFFIX_FORMATS = {".json": "json", ".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".html": "html"}
DEFAULT_BASELINE = "baseline: the dense model on the validation split"
BEST_RULE = "best per row: higher sparsity, better metric, higher Δ_T, shorter time"
BOUNDED = "delta_t_bounded"
"""The key of the bounded Δ_T in ``RunReport.scores``; reports show it beside Δ_T, not among the other scores."""
BOUNDED_SYMBOL = SCORE_CONVENTIONS[BOUNDED].symbol
COLLAPSED_MARK = " (collapsed)"

_FIELD_TITLES = {
    "target_sparsity": "target sparsity",
    "overall_sparsity": "achieved sparsity",
    "prunable_params": "prunable weights",
    "wall_seconds": "wall time",
}

Kind = Literal["text", "int", "ratio", "float", "threshold", "signed", "seconds"]
Value = str | float | int | None


@dataclass(frozen=True)
class RunView:
    """One finished run as the renderers see it.

    Attributes:
        label: column heading in comparisons (the folder name, or the path when names repeat).
        report: ``report.json``.
        baseline: one line naming what the pruned model is compared with.
        metrics: the ``metrics.jsonl`` records (one per logged step), for the plots over steps.
    """

    label: str
    report: RunReport
    baseline: str = DEFAULT_BASELINE
    path: Path | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One line of the comparison view (and of the CSV): a value per run.

    ``better`` is +1 when a higher value is better, -1 when lower is, 0 when the row has no best value.
    """

    section: str
    name: str
    field: str
    kind: Kind
    values: tuple[Value, ...]
    better: int = 0
    human: bool = True
    mark: str = ""

    @property
    def label(self) -> str:
        """How people read the row: ``backbone sparsity``, ``segmentation miou ↑ pruned``, ``wall time``."""
        fld = _FIELD_TITLES.get(self.field, self.field) if self.section == "summary" else self.field
        name = self.name.replace(".", " ", 1) if self.section == "metric" else self.name
        return " ".join(x for x in (name, self.mark, fld) if x)

    def best(self) -> set[int]:
        """Indices of the best values; empty when the row has no direction or every run ties."""
        nums = [(i, float(v)) for i, v in enumerate(self.values) if isinstance(v, (int, float)) and math.isfinite(v)]
        if not self.better or len(nums) < 2:
            return set()
        top = max(v * self.better for _, v in nums)
        best = {i for i, v in nums if v * self.better == top}
        return set() if len(best) == len(nums) else best


@dataclass(frozen=True)
class Plot:
    """One rendered figure: file name (``name.png``), caption, PNG bytes."""

    name: str
    caption: str
    png: bytes


def write_output(path: Path, data: str | bytes) -> None:
    """Write a file the user asked for, atomically, with the permissions a plain ``open()`` would give it.

    (``atomic_write`` goes through ``mkstemp``, which creates files readable by the owner only: fine for run
    state, surprising for a report meant to be shared.)
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--output {str(path)!r} is a folder; pass a file path")
    if isinstance(data, str):
        atomic_write(path, lambda p: p.write_text(data, encoding="utf-8"))
    else:
        atomic_write(path, lambda p: p.write_bytes(data))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def resolve_format(
    fmt: str | None, *, as_json: bool = False, markdown: bool = False, output: Path | None = None, sort: str = "model"
) -> str:
    """The format asked for: ``--format``, a short flag, else ``--output``'s suffix, else ``table``.

    Raises:
        ConfigError: an unknown format or sort key, or flags that contradict each other (all named at once).
    """
    asked = {name for name, on in (("json", as_json), ("markdown", markdown)) if on}
    problems = []
    if fmt is not None and fmt not in FORMATS:
        problems.append(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt is not None:
        asked.add(fmt)
    if len(asked) > 1:
        problems.append(f"pick one format, got {', '.join(sorted(asked))}")
    if sort not in SORTS:
        problems.append(f"--sort {sort!r} is not one of {', '.join(SORTS)}")
    if problems:
        raise ConfigError("; ".join(problems))
    if asked:
        return asked.pop()
    if output is not None:
        return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "table")
    return "table"


def load_report(run: Path) -> RunReport:
    """The ``report.json`` of a finished run."""
    rd = RunDir(run)
    if rd.root.is_dir() and rd.is_run() and not rd.report.is_file():
        raise ConfigError(
            f"run {str(run)!r} has not finished (no report.json); continue it with `adapmtl prune --resume --out {run}`"
        )
    return read_model(rd.report, RunReport)


def _baseline(rd: RunDir) -> str:
    try:
        cfg = read_model(rd.config, PruneConfig)
    except (AdapmtlError, ValidationError, ValueError):
        return DEFAULT_BASELINE
    tail = f" (first {cfg.eval_batches} batches)" if cfg.eval_batches else ""
    split = "validation" if cfg.eval_split == "val" else cfg.eval_split
    return f"baseline: the dense checkpoint {cfg.checkpoint} on the {split} split of {cfg.data_dir}{tail}"


def load_runs(paths: Sequence[Path]) -> list[RunView]:
    """Load every run (all problems on one line); labels are folder names, or paths when names repeat."""
    reports: list[RunReport] = []
    problems: list[str] = []
    for p in paths:
        try:
            reports.append(load_report(p))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
    labels = run_labels(paths)
    return [
        RunView(
            label, rep, _baseline(RunDir(p)), Path(p), [r for r in read_jsonl(RunDir(p).metrics) if "event" not in r]
        )
        for label, rep, p in zip(labels, reports, paths, strict=True)
    ]


def run_labels(paths: Sequence[Path]) -> list[str]:
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def sorted_layers(report: RunReport, sort: str = "model") -> list[LayerSparsity]:
    """Layers grouped by component (in the report's component order), each group ordered by ``sort``.

    ``model`` keeps model order; ``sparsity`` and ``params`` put the largest first; ``name`` is natural order.
    """
    if sort not in SORTS:
        raise ConfigError(f"--sort {sort!r} is not one of {', '.join(SORTS)}")
    order = {c.name: i for i, c in enumerate(report.components)}
    groups: dict[str, list[LayerSparsity]] = {}
    for layer in report.layers:
        groups.setdefault(layer.component, []).append(layer)
    out: list[LayerSparsity] = []
    for comp in sorted(groups, key=lambda c: order.get(c, len(order))):
        layers = groups[comp]
        if sort == "sparsity":
            layers = sorted(layers, key=lambda x: -x.sparsity)
        elif sort == "params":
            layers = sorted(layers, key=lambda x: -x.params)
        elif sort == "name":
            layers = sorted(layers, key=lambda x: _natural(x.name))
        out.extend(layers)
    return out


def layer_scale_note(report: RunReport) -> str:
    """``", layer scale saliency"`` for threshold methods, ``""`` where it does not apply (masks, older reports)."""
    return f", layer scale {report.layer_scale}" if report.layer_scale else ""


def fmt(value: Value, kind: Kind) -> str:
    """How every human-readable format prints a value of ``kind``."""
    if value is None:
        return "-"
    if kind == "text" or isinstance(value, str):
        return str(value)
    if kind == "int":
        return f"{int(value):,}"
    if kind == "ratio":
        return f"{value:.2%}"
    if kind == "threshold":
        return f"{value:.3g}"
    if kind == "signed":
        return f"{value:+.2f}"
    if kind == "seconds":
        return f"{value:.0f} s"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def relative_change(dense: float, pruned: float, higher_is_better: bool) -> float | None:
    """Signed relative change in percent, + when the metric improved (the Δ_T convention); None if dense is 0."""
    if dense == 0 or not math.isfinite(dense) or not math.isfinite(pruned):
        return None
    return (pruned - dense) / abs(dense) * 100 * (1 if higher_is_better else -1)


def rows(runs: Sequence[RunView], *, layers: bool = True, sort: str = "model") -> list[Row]:
    """Every number of every run's ``report.json`` as rows with one value per run (missing = None)."""
    reps = [r.report for r in runs]
    out: list[Row] = []

    def add(
        section: str, name: str, fld: str, kind: Kind, get: Any, better: int = 0, human: bool = True, mark: str = ""
    ) -> None:
        values = []
        for rep in reps:
            try:
                values.append(get(rep))
            except (KeyError, StopIteration):
                values.append(None)
        out.append(Row(section, name, fld, kind, tuple(values), better, human, mark))

    add("summary", "", "method", "text", lambda r: r.method)
    add("summary", "", "weighting", "text", lambda r: r.weighting)
    add("summary", "", "layer_scale", "text", lambda r: r.layer_scale)
    add("summary", "", "target_sparsity", "ratio", lambda r: r.target_sparsity)
    add("summary", "", "overall_sparsity", "ratio", lambda r: r.overall_sparsity, +1)
    add("summary", "", "prunable_params", "int", lambda r: r.prunable_params)
    add("summary", "", "zeros", "int", lambda r: r.zeros, human=False)
    add("summary", "", "steps", "int", lambda r: r.steps)
    add("summary", "", "wall_seconds", "seconds", lambda r: r.wall_seconds, -1)
    for comp in _union([c.name for c in rep.components] for rep in reps):

        def get(r: RunReport, comp: str = comp) -> Any:
            return next(c for c in r.components if c.name == comp)

        add("component", comp, "kind", "text", lambda r, g=get: g(r).kind, human=False)
        add("component", comp, "tasks", "text", lambda r, g=get: ",".join(g(r).tasks), human=False)
        add("component", comp, "params", "int", lambda r, g=get: g(r).params, human=False)
        add("component", comp, "zeros", "int", lambda r, g=get: g(r).zeros, human=False)
        add("component", comp, "sparsity", "ratio", lambda r, g=get: g(r).sparsity, +1)
        add("component", comp, "threshold", "threshold", lambda r, g=get: g(r).threshold)
    for task in _union(rep.tasks for rep in reps):
        have = [rep.tasks[task] for rep in reps if task in rep.tasks]
        for metric in _union(tm.dense for tm in have):
            hib = next(tm.higher_is_better[metric] for tm in have if metric in tm.higher_is_better)
            name, mark = f"{task}.{metric}", "↑" if hib else "↓"
            add("metric", name, "better", "text", lambda r, t=task, m=metric: _better(r, t, m), human=False)
            add("metric", name, "dense", "float", lambda r, t=task, m=metric: r.tasks[t].dense[m], mark=mark)
            pruned = lambda r, t=task, m=metric: r.tasks[t].pruned[m]  # noqa: E731
            add("metric", name, "pruned", "float", pruned, 1 if hib else -1, mark=mark)
    _score_rows(reps, add)
    for task in _union(rep.task_weights for rep in reps):
        add("task_weight", "weight", task, "float", lambda r, t=task: r.task_weights[t])
    n_warn = max((len(rep.warnings) for rep in reps), default=0)
    for i in range(n_warn):
        add("warning", "", f"warning {i + 1}", "text", lambda r, i=i: r.warnings[i])
    if layers:
        by_run = {id(rep): {x.name: x for x in rep.layers} for rep in reps}
        for name in _union([x.name for x in sorted_layers(rep, sort)] for rep in reps):

            def lay(r: RunReport, name: str = name) -> LayerSparsity:
                return by_run[id(r)][name]

            add("layer", name, "component", "text", lambda r, g=lay: g(r).component, human=False)
            add("layer", name, "params", "int", lambda r, g=lay: g(r).params, human=False)
            add("layer", name, "zeros", "int", lambda r, g=lay: g(r).zeros, human=False)
            add("layer", name, "sparsity", "ratio", lambda r, g=lay: g(r).sparsity, +1)
            add("layer", name, "threshold", "threshold", lambda r, g=lay: g(r).threshold, human=False)
    return out


def _score_rows(reps: Sequence[RunReport], add: Callable[..., None]) -> None:
    """Δ_T, the bounded Δ_T beside it, the collapse flags and the other scores, as rows (``add`` of ``rows``)."""
    for task in _union(rep.delta_t.per_task for rep in reps):
        add("delta_t", "Δ_T", task, "signed", lambda r, t=task: r.delta_t.per_task[t], +1)
    add("delta_t", "Δ_T", "overall", "signed", lambda r: r.delta_t.overall, +1)
    add("delta_t", "Δ_T", "skipped", "text", lambda r: ",".join(r.delta_t.skipped), human=False)
    if any(BOUNDED in rep.scores for rep in reps):
        for task in _union(rep.scores[BOUNDED].per_task for rep in reps if BOUNDED in rep.scores):
            add("delta_t", BOUNDED_SYMBOL, task, "signed", lambda r, t=task: r.scores[BOUNDED].per_task[t], +1)
        add("delta_t", BOUNDED_SYMBOL, "overall", "signed", lambda r: r.scores[BOUNDED].overall, +1)
    for task in _union(rep.collapsed for rep in reps):
        add("collapse", "collapsed", task, "text", lambda r, t=task: "yes" if r.collapsed[t] else "no")
    for key, symbol in (("delta_m", "Δm"), ("delta_p", "Δ_p")):
        if any(key in rep.scores for rep in reps):
            better = next(rep.scores[key].higher_is_better for rep in reps if key in rep.scores)
            add("score", symbol, "overall", "float", lambda r, k=key: r.scores[k].overall, 1 if better else -1)


def _better(r: RunReport, task: str, metric: str) -> str:
    return "higher" if r.tasks[task].higher_is_better[metric] else "lower"


def _union(groups: Iterable[Iterable[str]]) -> list[str]:
    """Keys in first-seen order across runs."""
    seen: dict[str, None] = {}
    for g in groups:
        for k in g:
            seen.setdefault(k, None)
    return list(seen)


def score_lines(report: RunReport) -> list[str]:
    """One line per extra score (Δm, Δ_p): its value and its convention (the bounded Δ_T is beside Δ_T)."""
    symbols = {"delta_m": ("Δm", "{:+.2f}%"), "delta_p": ("Δ_p", "{:+.4f}")}
    lines = []
    for key, entry in report.scores.items():
        if key == BOUNDED:
            continue
        symbol, fmt = symbols.get(key, (key, "{:+.4g}"))
        lines.append(f"{symbol} {fmt.format(entry.overall)}: {entry.convention}")
    return lines


def per_task_scores(values: Mapping[str, float], report: RunReport) -> str:
    """``seg +1.99, depth -3.10 (collapsed)``: a score per task as every format prints it, collapsed tasks marked."""
    return ", ".join(f"{t} {v:+.2f}" + (COLLAPSED_MARK if report.collapsed.get(t) else "") for t, v in values.items())


def bounded_score(report: RunReport) -> ScoreEntry | None:
    """The bounded Δ_T of ``report``; None in reports written before it."""
    return report.scores.get(BOUNDED)


def collapsed_tasks(report: RunReport) -> list[str]:
    """The tasks whose pruned model collapsed."""
    return [task for task, flag in report.collapsed.items() if flag]


def collapse_line(report: RunReport) -> str | None:
    """``collapsed tasks: depth (the rule)``, or ``none``; None in reports written before the check."""
    if not report.collapsed:
        return None
    return f"collapsed tasks: {', '.join(collapsed_tasks(report)) or 'none'} ({COLLAPSE_CONVENTION})"

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

from adapmtl_cli.config import ExportManifest, LatencyManifest, LayerSparsity, PruneConfig, RunReport, ScoreEntry
from adapmtl_cli.errors import AdapmtlError, ConfigError
from adapmtl_cli.files.atomic import atomic_write, read_jsonl, read_model
from adapmtl_cli.files.rundir import RunDir
from adapmtl_cli.report.channels import channel_rows, channels_of, summary_rows
from adapmtl_cli.report.formats import SORTS
from adapmtl_cli.tasks.scores import COLLAPSE_CONVENTION, SCORE_CONVENTIONS

DEFAULT_BASELINE = "baseline: the dense model on the validation split"
BEST_RULE = (
    "best per row: higher overall sparsity, better metric, higher Δ_T, shorter time; rows without a better "
    "direction (sparsity per component or layer, thresholds, task weights) are not marked"
)
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

Kind = Literal["text", "int", "ratio", "float", "threshold", "signed", "seconds", "factor"]
Value = str | float | int | None


@dataclass(frozen=True)
class RunView:
    """One finished run as the renderers see it.

    Attributes:
        label: column heading in comparisons (the shortest path suffix that tells the runs apart).
        report: ``report.json``.
        baseline: one line naming what the pruned model is compared with.
        metrics: the ``metrics.jsonl`` records (one per logged step), for the plots over steps.
        eval_split: the split both models were scored on (``val`` or ``test``; the run's ``eval_split``).
        latency: the onnxruntime latency ``adapmtl export`` measured (``RUN/export/manifest.json``), if any.
    """

    label: str
    report: RunReport
    baseline: str = DEFAULT_BASELINE
    path: Path | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval_split: str = "val"
    latency: LatencyManifest | None = None


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
    title: str = ""
    """How people read the row, where its name and field do not say it (channel runs' units)."""

    @property
    def label(self) -> str:
        """How people read the row: ``backbone sparsity``, ``segmentation miou ↑ pruned``, ``wall time``."""
        if self.title:
            return self.title
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


def load_report(run: Path) -> RunReport:
    """The ``report.json`` of a finished run."""
    rd = RunDir(run)
    if rd.root.is_dir() and rd.is_run() and not rd.report.is_file():
        raise ConfigError(
            f"run {str(run)!r} has not finished (no report.json); continue it with `adapmtl resume {run}`"
        )
    return read_model(rd.report, RunReport)


def split_name(eval_split: str) -> str:
    """How the reports name an evaluation split: ``validation`` for ``val``, else the split's own name."""
    return "validation" if eval_split == "val" else eval_split


def metrics_title(splits: Sequence[str]) -> str:
    """The title of the task metrics: ``Task metrics on the test split``, or each run's split when they differ."""
    names = sorted({split_name(s) for s in splits}) or ["validation"]
    if len(names) == 1:
        return f"Task metrics on the {names[0]} split"
    return f"Task metrics on each run's own split ({', '.join(names)}; see the baselines)"


def _run_config(rd: RunDir) -> PruneConfig | None:
    try:
        return read_model(rd.config, PruneConfig)
    except (AdapmtlError, ValidationError, ValueError):
        return None


def _baseline(cfg: PruneConfig | None) -> str:
    if cfg is None:
        return DEFAULT_BASELINE
    tail = f" (first {cfg.eval_batches} batches)" if cfg.eval_batches else ""
    split = split_name(cfg.eval_split)
    return f"baseline: the dense checkpoint {cfg.checkpoint} on the {split} split of {cfg.data_dir}{tail}"


def load_runs(paths: Sequence[Path]) -> list[RunView]:
    """Load every run (all problems on one line); labels are the shortest path suffixes that tell them apart."""
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
    views = []
    for label, rep, p in zip(labels, reports, paths, strict=True):
        cfg = _run_config(RunDir(p))
        metrics = [r for r in read_jsonl(RunDir(p).metrics) if "event" not in r]
        split = cfg.eval_split if cfg is not None else "val"
        latency = _export_latency(RunDir(p))
        views.append(RunView(label, rep, _baseline(cfg), Path(p), metrics, eval_split=split, latency=latency))
    return views


def _export_latency(rd: RunDir) -> LatencyManifest | None:
    """The latency in ``RUN/export/manifest.json``; None without one (no export, ``--no-latency``, unreadable)."""
    path = rd.export_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        return read_model(path, ExportManifest).latency
    except (AdapmtlError, ValidationError, ValueError):  # the report is about the run: a bad export is not fatal
        return None


LATENCY_TITLE = "ONNX latency (onnxruntime CPU, from export/manifest.json)"


def latency_lines(latency: LatencyManifest) -> list[str]:
    """``latency model.onnx: 3.21 ms vs dense 3.18 ms (1.01× dense; batch 8, 1 thread, median of 20)``: one line
    per file at the measured batch, then at batch 1 (as ``export`` prints them and every report shows them)."""
    threads = f"{latency.threads} thread{'' if latency.threads == 1 else 's'}"
    if latency.input_shape is not None:
        threads += f", input {'x'.join(map(str, latency.input_shape))}"
    sizes = [(latency.batch, latency.dense_ms, latency.files)]
    if latency.batch != 1:
        sizes.append((1, latency.batch1.dense_ms, latency.batch1.files))
    return [
        f"latency {name}: {ms:.2f} ms vs dense {dense:.2f} ms ({ms / dense:.2f}× dense; batch {batch}, {threads}, "
        f"median of {latency.repeats})"
        for batch, dense, files in sizes
        for name, ms in files.items()
    ]


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Column headings: per run the shortest path suffix no other run shares (``a/run``, ``b/run``).

    The same folder given twice keeps its path, numbered from the second time (``runs/a #2``).
    """
    parts = [Path(p).parts or (str(p),) for p in paths]
    out = []
    for i, mine in enumerate(parts):
        others = [x for j, x in enumerate(parts) if j != i]
        label = None
        for k in range(1, len(mine) + 1):
            if all(x[-k:] != mine[-k:] for x in others):
                label = str(Path(*mine[-k:]))
                break
        out.append(label if label is not None else str(paths[i]))
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            out[i] = f"{n} #{seen[n]}"
    return out


def baseline_warning(runs: Sequence[RunView]) -> str | None:
    """A warning when compared runs were scored against different dense models or data (their dense metrics
    differ), so their changes and Δ_T do not compare; None when every run has the same baseline."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        key = repr(sorted((t, sorted(m.dense.items())) for t, m in run.report.tasks.items()))
        groups.setdefault(key, []).append(run.label)
    if len(groups) < 2:
        return None
    sets = "; ".join(", ".join(labels) for labels in groups.values())
    return (
        f"the runs have different dense baselines (dense metrics differ between {sets}): their changes and Δ_T "
        "are measured against different models or data; compare their pruned metrics instead"
    )


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
    if kind == "factor":
        return f"{value:.2f}×"
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
        section: str,
        name: str,
        fld: str,
        kind: Kind,
        get: Any,
        better: int = 0,
        human: bool = True,
        mark: str = "",
        title: str = "",
    ) -> None:
        values = []
        for rep in reps:
            try:
                values.append(get(rep))
            except (KeyError, StopIteration):
                values.append(None)
        out.append(Row(section, name, fld, kind, tuple(values), better, human, mark, title))

    channel = any(channels_of(rep) is not None for rep in reps)
    _summary_rows(add, channel=channel)
    for comp in _union([c.name for c in rep.components] for rep in reps):

        def get(r: RunReport, comp: str = comp) -> Any:
            return next(c for c in r.components if c.name == comp)

        add("component", comp, "kind", "text", lambda r, g=get: g(r).kind, human=False)
        add("component", comp, "tasks", "text", lambda r, g=get: ",".join(g(r).tasks), human=False)
        add("component", comp, "params", "int", lambda r, g=get: g(r).params, human=False)
        add("component", comp, "zeros", "int", lambda r, g=get: g(r).zeros, human=False)
        # Where the sparsity went has no better direction: only the overall figure does.
        add("component", comp, "sparsity", "ratio", lambda r, g=get: g(r).sparsity)
        add("component", comp, "threshold", "threshold", lambda r, g=get: g(r).threshold)
    if channel:
        channel_rows(reps, add)
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
            add("layer", name, "sparsity", "ratio", lambda r, g=lay: g(r).sparsity)
            add("layer", name, "threshold", "threshold", lambda r, g=lay: g(r).threshold, human=False)
    return out


def _summary_rows(add: Callable[..., None], *, channel: bool) -> None:
    """The summary rows (``add`` of ``rows``); with a channel run among the runs, also what each run pruned and
    what its target counts, and titles naming the units (weight runs alone: as before channel runs existed)."""
    add("summary", "", "method", "text", lambda r: r.method)
    add("summary", "", "weighting", "text", lambda r: r.weighting)
    add("summary", "", "layer_scale", "text", lambda r: r.layer_scale)
    if channel:
        summary_rows(add)
    target_title = "target sparsity (in the target unit)" if channel else ""
    add("summary", "", "target_sparsity", "ratio", lambda r: r.target_sparsity, title=target_title)
    zeros_title = "achieved sparsity (weights zero)" if channel else ""
    add("summary", "", "overall_sparsity", "ratio", lambda r: r.overall_sparsity, +1, title=zeros_title)
    add("summary", "", "prunable_params", "int", lambda r: r.prunable_params)
    add("summary", "", "zeros", "int", lambda r: r.zeros, human=False)
    add("summary", "", "steps", "int", lambda r: r.steps)
    add("summary", "", "wall_seconds", "seconds", lambda r: r.wall_seconds, -1)


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

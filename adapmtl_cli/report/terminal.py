"""Render runs, ``inspect``'s dry run and ``data check`` for the terminal (rich); pick the renderer per ``--format``.

Renderers are pure: they take ``views`` (or the plain records a job returns) and give back a renderable or a
string; only ``cli/ui.py`` prints. Markdown, CSV and JSON live in ``text``, the HTML page in ``html``, figures in
``plots``. Nothing here imports a job: the dry run's records are described by the protocols below.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from adapmtl_cli.config import ChannelReport, ComponentsManifest, LatencyManifest, RunReport
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.report.channels import (
    CHANNEL_HEAD,
    CHANNEL_NOTE,
    CHANNEL_NUMERIC,
    CHANNEL_TITLE,
    ZERO_WEIGHTS_TITLE,
    channel_cells,
    channels_of,
    headline,
    unit,
)
from adapmtl_cli.report.formats import FORMATS
from adapmtl_cli.report.text import SECTION_TITLES, compare_json, compare_markdown, report_csv, report_markdown
from adapmtl_cli.report.views import (
    BEST_RULE,
    BOUNDED_SYMBOL,
    LATENCY_TITLE,
    Plot,
    RunView,
    baseline_warning,
    bounded_score,
    collapse_line,
    collapsed_tasks,
    fmt,
    latency_lines,
    layer_scale_note,
    load_report,
    metrics_title,
    per_task_scores,
    relative_change,
    rows,
    score_lines,
    sorted_layers,
    split_name,
)

__all__ = [
    "NotPrunedModule",
    "StepCost",
    "components_renderable",
    "compare_renderable",
    "dataset_renderable",
    "load_report",
    "plain_text",
    "render_text",
    "report_markdown",
    "report_renderable",
]


class NotPrunedModule(Protocol):
    """A module that keeps all its weights, and why (what ``jobs.inspect.not_pruned`` lists)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def params(self) -> int: ...
    @property
    def reason(self) -> str: ...


class StepCost(Protocol):
    """The measured cost of a planned run's training step (what ``jobs.inspect.estimate_step`` returns)."""

    @property
    def method(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def timed_steps(self) -> int: ...
    @property
    def seconds_per_step(self) -> float: ...
    @property
    def steps(self) -> int: ...
    @property
    def peak_memory_bytes(self) -> int: ...
    @property
    def memory_kind(self) -> str: ...
    @property
    def total_seconds(self) -> float: ...


_UNLIMITED = 1_000_000
"""Columns to measure a renderable in: wide enough that nothing is ever fitted to it."""


def _bar(fraction: float, width: int = 12) -> str:
    filled = int(round(fraction * width))
    return "█" * filled + "·" * (width - filled)


def _component_table(report: RunReport) -> Table:
    title = "Sparsity per component" if channels_of(report) is None else ZERO_WEIGHTS_TITLE
    comp = Table(title=title, title_justify="left")
    for col in ("component", "kind", "tasks", "params", "sparsity", "", "threshold"):
        comp.add_column(col, justify="right" if col in ("params", "sparsity", "threshold") else "left")
    for c in report.components:
        comp.add_row(
            c.name,
            c.kind,
            ",".join(c.tasks),
            f"{c.params:,}",
            f"{c.sparsity:.2%}",
            _bar(c.sparsity),
            fmt(c.threshold, "threshold"),
        )
    return comp


def _metrics_table(report: RunReport, eval_split: str) -> Table:
    metrics = Table(
        title=f"{metrics_title([eval_split])} (dense → pruned; ↑ higher is better, ↓ lower)",
        title_justify="left",
    )
    for col in ("task", "metric", "better", "dense", "pruned", "change", "relative"):
        metrics.add_column(col, justify="left" if col in ("task", "metric", "better") else "right")
    for task, tm in report.tasks.items():
        for m, dense in tm.dense.items():
            pruned = tm.pruned[m]
            hib = tm.higher_is_better[m]
            diff = pruned - dense
            good = (diff >= 0) if hib else (diff <= 0)
            rel = relative_change(dense, pruned, hib)
            style = "green" if good else "red"
            metrics.add_row(
                task,
                m,
                "↑" if hib else "↓",
                fmt(dense, "float"),
                fmt(pruned, "float"),
                Text(f"{diff:+.4f}", style=style),
                Text(f"{rel:+.1f}%" if rel is not None else "-", style=style),
            )
    return metrics


def _layer_table(report: RunReport, sort: str) -> Table:
    title = "Sparsity per layer" + ("" if sort == "model" else f" (sorted by {sort} within each component)")
    lt = Table(title=title, title_justify="left")
    for col in ("component", "layer", "params", "sparsity", "", "threshold"):
        lt.add_column(col, justify="right" if col in ("params", "sparsity", "threshold") else "left")
    layers = sorted_layers(report, sort)
    for i, layer in enumerate(layers):
        first = i == 0 or layers[i - 1].component != layer.component
        last = i == len(layers) - 1 or layers[i + 1].component != layer.component
        lt.add_row(
            layer.component if first else "",
            layer.name,
            f"{layer.params:,}",
            f"{layer.sparsity:.2%}",
            _bar(layer.sparsity),
            fmt(layer.threshold, "threshold"),
            end_section=last,
        )
    return lt


def report_renderable(
    report: RunReport,
    *,
    layers: bool = False,
    sort: str = "model",
    baseline: str | None = None,
    eval_split: str = "val",
    latency: LatencyManifest | None = None,
) -> Group:
    """The terminal view: summary line, component table, task metrics, Δ_T, ONNX latency, optional layer table.

    ``eval_split`` names the split the metrics come from (the run's ``eval_split``), for the titles; ``latency``
    is the export's measurement (shown when given).
    """
    ch = channels_of(report)
    head = _headline(report) if ch is None else _channel_headline(report, ch)
    dt = report.delta_t
    bounded = bounded_score(report)
    baseline = baseline or f"baseline: the dense model on the {split_name(eval_split)} split"
    notes = [dt.convention, *([bounded.convention] if bounded else []), baseline]
    notes += score_lines(report)
    if report.task_weights:
        notes.append(_weights_line(report))
    if dt.skipped:
        notes.append(f"skipped (dense value 0): {', '.join(dt.skipped)}")
    parts: list[RenderableType] = [head]
    if ch is not None:
        parts += [_channel_table(ch), Text(CHANNEL_NOTE, style="dim")]
    parts += [_component_table(report), _metrics_table(report, eval_split)]
    parts += _score_texts(report)
    parts.extend(Text(n, style="dim") for n in notes)
    parts.extend(Text(f"warning: {w}", style="yellow") for w in report.warnings)
    if latency is not None:
        parts.append(Text(LATENCY_TITLE, style="bold"))
        parts.extend(Text(line) for line in latency_lines(latency))
    if layers:
        parts.append(_layer_table(report, sort))
    return Group(*parts)


def _run_note(report: RunReport) -> str:
    return (
        f"method {report.method}, weighting {report.weighting}{layer_scale_note(report)}, {report.steps} steps, "
        f"{report.wall_seconds:.0f} s"
    )


def _headline(report: RunReport) -> Text:
    """``Sparsity target 50.00% → achieved 50.00% of N prunable weights (Z zeros); method ...``: a weight run."""
    return Text.assemble(
        ("Sparsity ", "bold"),
        f"target {report.target_sparsity:.2%} → achieved ",
        (f"{report.overall_sparsity:.2%}", "bold green"),
        f" of {report.prunable_params:,} prunable weights ({report.zeros:,} zeros); {_run_note(report)}",
    )


def _channel_headline(report: RunReport, ch: ChannelReport) -> Text:
    """``Channels target 50.00% of channels → achieved 50.00% of channels (weights zero: ...); method ...``."""
    text = headline(report, ch)
    achieved = f"achieved {ch.achieved:.2%} of {unit(ch)}"
    before, _, after = text.partition(achieved)
    return Text.assemble(("Channels ", "bold"), before, (achieved, "bold green"), f"{after}; {_run_note(report)}")


def _channel_table(ch: ChannelReport) -> Table:
    """A row per component (channels, removed, kept, params before → after), then the whole model's total."""
    table = Table(title=CHANNEL_TITLE, title_justify="left")
    for col, numeric in zip(CHANNEL_HEAD, CHANNEL_NUMERIC, strict=True):
        table.add_column(col, justify="right" if numeric else "left")
    cells = channel_cells(ch)
    for i, row in enumerate(cells):
        total = i == len(cells) - 1
        table.add_row(*row, style="bold" if total else None, end_section=i == len(cells) - 2)
    return table


def _score_line(symbol: str, overall: float, per_task: dict[str, float], report: RunReport) -> Text:
    return Text.assemble(
        (f"{symbol} ", "bold"),
        (f"{overall:+.2f}%", "bold green" if overall >= 0 else "bold red"),
        f"  ({per_task_scores(per_task, report)})",
    )


def _score_texts(report: RunReport) -> list[RenderableType]:
    """Δ_T, the bounded Δ_T under it and the collapse line (yellow when a task collapsed); older reports: Δ_T."""
    out: list[RenderableType] = [_score_line("Δ_T", report.delta_t.overall, report.delta_t.per_task, report)]
    bounded = bounded_score(report)
    if bounded is not None:
        out.append(_score_line(BOUNDED_SYMBOL, bounded.overall, bounded.per_task, report))
    line = collapse_line(report)
    if line is not None:
        out.append(Text(line, style="bold yellow" if collapsed_tasks(report) else "dim"))
    return out


def _weights_line(report: RunReport) -> str:
    return "task weights at the last step: " + ", ".join(
        f"{t} {fmt(w, 'float')}" for t, w in report.task_weights.items()
    )


def compare_renderable(runs: Sequence[RunView], *, layers: bool = False, sort: str = "model") -> Group:
    """Runs side by side: one column per run, sections as in the single view; the best value per row marked ★."""
    table = Table(title=f"Comparing {len(runs)} runs", title_justify="left")
    table.add_column("")
    for r in runs:
        table.add_column(r.label, justify="right")
    shown = [row for row in rows(runs, layers=layers, sort=sort) if row.human]
    for i, row in enumerate(shown):
        if i == 0 or shown[i - 1].section != row.section:
            title = metrics_title([r.eval_split for r in runs]) if row.section == "metric" else None
            table.add_row(Text(title or SECTION_TITLES[row.section], style="bold"), *([""] * len(runs)))
        best = row.best()
        cells = [
            Text(fmt(v, row.kind) + " ★", style="bold green") if j in best else Text(fmt(v, row.kind))
            for j, v in enumerate(row.values)
        ]
        last = i == len(shown) - 1 or shown[i + 1].section != row.section
        table.add_row(row.label, *cells, end_section=last)
    legend = [Text(f"★ {BEST_RULE}", style="dim")]
    legend += [Text(f"{r.label}: {r.path if r.path else '-'}; {r.baseline}", style="dim") for r in runs]
    different = baseline_warning(runs)
    if different is not None:
        legend.append(Text(f"warning: {different}", style="yellow"))
    return Group(table, *legend)


def render_text(
    runs: Sequence[RunView],
    fmt_name: str,
    *,
    layers: bool = False,
    sort: str = "model",
    width: int = 120,
    plots: Sequence[Plot] | None = None,
) -> str:
    """The report in ``fmt_name`` as a string (for ``--output`` and for pipes); ``table`` is drawn without colour.

    ``plots`` are inlined into the HTML page; ``None`` there means matplotlib is missing (the page says so).
    """
    if fmt_name not in FORMATS:
        raise ConfigError(f"--format {fmt_name!r} is not one of {', '.join(FORMATS)}")
    compare = len(runs) > 1
    if fmt_name == "json":
        return compare_json(runs, sort=sort) if compare else runs[0].report.model_dump_json(indent=2) + "\n"
    if fmt_name == "csv":
        return report_csv(runs, layers=True, sort=sort)
    if fmt_name == "markdown":
        if compare:
            return compare_markdown(runs, layers=layers, sort=sort)
        run = runs[0]
        return report_markdown(run.report, layers=layers, sort=sort, baseline=run.baseline, latency=run.latency)
    if fmt_name == "html":
        from adapmtl_cli.report.html import report_html

        return report_html(runs, layers=layers, sort=sort, plots=plots)
    return plain_text(terminal_renderable(runs, layers=layers, sort=sort), min_width=width)


def plain_text(renderable: RenderableType, *, min_width: int = 80) -> str:
    """``renderable`` as plain text at its natural width (at least ``min_width``): nothing cut, no colour codes.

    What every command prints off a terminal and what ``report --output x.txt`` writes: rich fits tables into
    the console's width by cutting cells (``…``), so the width is measured first, with no limit.
    """
    probe = Console(file=io.StringIO(), width=_UNLIMITED, color_system=None, highlight=False, soft_wrap=True)
    width = max(min_width, Measurement.get(probe, probe.options, renderable).maximum)
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False, soft_wrap=True)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def terminal_renderable(runs: Sequence[RunView], *, layers: bool = False, sort: str = "model") -> Group:
    if len(runs) > 1:
        return compare_renderable(runs, layers=layers, sort=sort)
    run = runs[0]
    return report_renderable(
        run.report, layers=layers, sort=sort, baseline=run.baseline, eval_split=run.eval_split, latency=run.latency
    )


def components_renderable(
    manifest: ComponentsManifest,
    not_pruned: Sequence[NotPrunedModule] | None = None,
    estimate: StepCost | None = None,
) -> Group:
    """``inspect``'s view: the component tree, what will not be pruned and why, and the step estimate."""
    tree = Tree(
        Text.assemble(
            ("Model", "bold"),
            f"  tasks {', '.join(manifest.tasks)}; outputs {manifest.outputs} (matched by {manifest.output_mapping})",
        )
    )
    total = max(1, manifest.prunable_params)
    for c in manifest.components:
        node = tree.add(
            Text.assemble(
                (c.name, "bold cyan"),
                f"  [{c.kind}; tasks {','.join(c.tasks)}]  {c.prunable_params:,} prunable of {c.params:,} params "
                f"({c.prunable_params / total:.1%} of prunable)",
            )
        )
        layers = [x for x in manifest.layers if x.component == c.name]
        for layer in layers[:8]:
            node.add(f"{layer.name} ({layer.type}, {layer.params:,})")
        if len(layers) > 8:
            node.add(Text(f"... {len(layers) - 8} more layers", style="dim"))
    parts: list[RenderableType] = [tree]
    summary = (
        f"{len(manifest.layers)} prunable layers, {manifest.prunable_params:,} prunable of "
        f"{manifest.total_params:,} parameters ({manifest.prunable_params / max(1, manifest.total_params):.1%})"
    )
    parts.append(Text(summary))
    if not_pruned is None:
        if manifest.excluded:
            parts.append(Text(f"excluded by --exclude: {', '.join(manifest.excluded)}", style="yellow"))
        if manifest.unreached:
            parts.append(Text(f"reached by no task (not pruned): {', '.join(manifest.unreached)}", style="yellow"))
    elif not_pruned:
        parts.append(_not_pruned_table(not_pruned))
    if estimate is not None:
        parts.append(
            Text.assemble(
                ("Estimate ", "bold"),
                f"{estimate.method} at --batch-size {estimate.batch_size} on {estimate.device}: "
                f"{estimate.seconds_per_step:.3g} s per step (mean of {estimate.timed_steps} after a warm-up) → about "
                f"{_duration(estimate.total_seconds)} for {estimate.steps} steps, evaluation not included; peak "
                f"{estimate.memory_kind} {estimate.peak_memory_bytes / 2**20:,.0f} MiB",
            )
        )
    return Group(*parts)


def _not_pruned_table(items: Sequence[NotPrunedModule]) -> Table:
    """Modules that keep all their weights: norms and other types grouped by type, named modules listed."""
    table = Table(title="Not pruned", title_justify="left")
    for col in ("reason", "modules", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    groups: dict[tuple[str, str], list[NotPrunedModule]] = {}
    for x in items:
        key = (x.reason, x.type if x.reason == "type not prunable" else "")
        groups.setdefault(key, []).append(x)
    for (reason, kind), xs in groups.items():
        if kind:
            what = f"{len(xs)} × {kind}"
        else:
            names = ", ".join(f"{x.name} ({x.type})" for x in xs[:6])
            what = names + (f", ... {len(xs) - 6} more" if len(xs) > 6 else "")
        table.add_row(reason, what, f"{sum(x.params for x in xs):,}")
    return table


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dataset_renderable(desc: dict) -> Group:
    """``data check``'s view of an adapter's ``describe``: splits, tasks, class histogram, invalid depth."""
    splits = Table(title=f"Dataset {desc['root']}", title_justify="left")
    for col in ("split", "folder", "samples", "size"):
        splits.add_column(col, justify="right" if col == "samples" else "left")
    for name, info in desc["splits"].items():
        splits.add_row(name, info["folder"], str(info["samples"]), "x".join(map(str, info["size"])))
    parts: list[RenderableType] = [splits]
    if desc.get("class_pixels") is not None:
        sampled = desc.get("sampled") or {}
        classes = Table(
            title=f"Label pixels in the first {sampled.get('samples', '?')} {sampled.get('split', '')} samples",
            title_justify="left",
        )
        classes.add_column("class")
        classes.add_column("pixels", justify="right")
        classes.add_column("share", justify="right")
        total = max(1, sum(desc["class_pixels"].values()))
        for cls, n in desc["class_pixels"].items():
            classes.add_row(cls, f"{n:,}", f"{n / total:.1%}")
        parts.append(classes)
    ratio = desc.get("depth_invalid_ratio")
    layout = f"layout: {desc['layout']}; " if desc.get("layout") else ""
    parts.append(
        Text(
            f"{layout}tasks: {', '.join(desc['tasks'])}; invalid depth pixels: "
            + (f"{ratio:.1%}" if ratio is not None else "no depth")
        )
    )
    return Group(*parts)

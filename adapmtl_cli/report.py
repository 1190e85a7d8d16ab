"""Render a run's ``RunReport`` and a ``ComponentsManifest``: rich tables, JSON, Markdown.

Renderers are pure: they take the model and return a renderable or a string; only ``ui.py`` prints.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from adapmtl_cli.config import ComponentsManifest, RunReport
from adapmtl_cli.rundir import RunDir, read_model


def load_report(run: Path) -> RunReport:
    """The ``report.json`` of a finished run."""
    rd = RunDir(run)
    if rd.root.is_dir() and rd.is_run() and not rd.report.is_file():
        from adapmtl_cli.errors import ConfigError

        raise ConfigError(
            f"run {str(run)!r} has not finished (no report.json); continue it with `adapmtl prune --resume --out {run}`"
        )
    return read_model(rd.report, RunReport)


def _bar(fraction: float, width: int = 12) -> str:
    filled = int(round(fraction * width))
    return "█" * filled + "·" * (width - filled)


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"


def report_renderable(report: RunReport, *, layers: bool = False) -> Group:
    """The terminal view: summary line, component table, task metrics, Δ_T, optional layer table."""
    head = Text.assemble(
        ("Sparsity ", "bold"),
        f"target {report.target_sparsity:.2%} → achieved ",
        (f"{report.overall_sparsity:.2%}", "bold green"),
        f" of {report.prunable_params:,} prunable weights ({report.zeros:,} zeros); method {report.method}, "
        f"weighting {report.weighting}, {report.steps} steps, {report.wall_seconds:.0f} s",
    )
    comp = Table(title="Components", title_justify="left")
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
            f"{c.threshold:.3g}" if c.threshold is not None else "-",
        )
    metrics = Table(title="Task metrics on the validation split (dense → pruned)", title_justify="left")
    for col in ("task", "metric", "better", "dense", "pruned", "change"):
        metrics.add_column(col, justify="right" if col in ("dense", "pruned", "change") else "left")
    for task, tm in report.tasks.items():
        for m, dense in tm.dense.items():
            pruned = tm.pruned[m]
            hib = tm.higher_is_better[m]
            diff = pruned - dense
            good = (diff >= 0) if hib else (diff <= 0)
            metrics.add_row(
                task,
                m,
                "↑" if hib else "↓",
                _fmt(dense),
                _fmt(pruned),
                Text(f"{diff:+.4f}", style="green" if good else "red"),
            )
    dt = report.delta_t
    per = ", ".join(f"{t} {v:+.2f}" for t, v in dt.per_task.items())
    delta = Text.assemble(
        ("Δ_T ", "bold"),
        (f"{dt.overall:+.2f}%", "bold green" if dt.overall >= 0 else "bold red"),
        f"  ({per})",
    )
    parts: list = [head, comp, metrics, delta, Text(dt.convention, style="dim")]
    if report.warnings:
        parts.extend(Text(f"warning: {w}", style="yellow") for w in report.warnings)
    if layers:
        lt = Table(title="Layers", title_justify="left")
        for col in ("layer", "component", "params", "sparsity"):
            lt.add_column(col, justify="right" if col in ("params", "sparsity") else "left")
        for layer in report.layers:
            lt.add_row(layer.name, layer.component, f"{layer.params:,}", f"{layer.sparsity:.2%}")
        parts.append(lt)
    return Group(*parts)


def report_markdown(report: RunReport) -> str:
    """The same numbers as a Markdown document."""
    lines = [
        f"**Sparsity**: target {report.target_sparsity:.2%}, achieved {report.overall_sparsity:.2%} "
        f"({report.zeros:,} of {report.prunable_params:,} prunable weights); method `{report.method}`, "
        f"weighting `{report.weighting}`",
        "",
        "| component | kind | tasks | params | sparsity | threshold |",
        "|---|---|---|---:|---:|---:|",
    ]
    for c in report.components:
        thr = f"{c.threshold:.3g}" if c.threshold is not None else "-"
        lines.append(f"| {c.name} | {c.kind} | {','.join(c.tasks)} | {c.params:,} | {c.sparsity:.2%} | {thr} |")
    lines += ["", "| task | metric | better | dense | pruned |", "|---|---|---|---:|---:|"]
    for task, tm in report.tasks.items():
        for m, dense in tm.dense.items():
            arrow = "↑" if tm.higher_is_better[m] else "↓"
            lines.append(f"| {task} | {m} | {arrow} | {_fmt(dense)} | {_fmt(tm.pruned[m])} |")
    per = ", ".join(f"{t} {v:+.2f}" for t, v in report.delta_t.per_task.items())
    lines += ["", f"**Δ_T** {report.delta_t.overall:+.2f}% ({per}). {report.delta_t.convention}", ""]
    return "\n".join(lines)


def components_renderable(manifest: ComponentsManifest) -> Group:
    """``inspect``'s view: the component tree and what will not be pruned."""
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
    parts: list = [tree]
    summary = (
        f"{len(manifest.layers)} prunable layers, {manifest.prunable_params:,} prunable of "
        f"{manifest.total_params:,} parameters"
    )
    parts.append(Text(summary))
    if manifest.excluded:
        parts.append(Text(f"excluded by --exclude: {', '.join(manifest.excluded)}", style="yellow"))
    if manifest.unreached:
        parts.append(Text(f"reached by no task (not pruned): {', '.join(manifest.unreached)}", style="yellow"))
    return Group(*parts)


def dataset_renderable(desc: dict) -> Group:
    """``data check``'s view of ``data.nyuv2.describe``: splits, tasks, class histogram, invalid depth."""
    splits = Table(title=f"Dataset {desc['root']}", title_justify="left")
    for col in ("split", "folder", "samples", "size"):
        splits.add_column(col, justify="right" if col == "samples" else "left")
    for name, info in desc["splits"].items():
        splits.add_row(name, info["folder"], str(info["samples"]), "x".join(map(str, info["size"])))
    classes = Table(
        title=f"Label pixels in the first {desc['sampled']['samples']} {desc['sampled']['split']} samples",
        title_justify="left",
    )
    classes.add_column("class")
    classes.add_column("pixels", justify="right")
    classes.add_column("share", justify="right")
    total = max(1, sum(desc["class_pixels"].values()))
    for cls, n in desc["class_pixels"].items():
        classes.add_row(cls, f"{n:,}", f"{n / total:.1%}")
    ratio = desc["depth_invalid_ratio"]
    tail = Text(
        f"tasks: {', '.join(desc['tasks'])}; invalid depth pixels: "
        + (f"{ratio:.1%}" if ratio is not None else "no depth")
    )
    return Group(splits, classes, tail)

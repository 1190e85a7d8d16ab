"""Plain-text report formats: Markdown for docs, CSV and JSON for machines, for one run or a comparison.

JSON of one run is ``report.json`` itself. CSV is one long table (``section,name,field`` then one value column
per run, full precision) so spreadsheets and pandas read every format the same way. Markdown follows the
terminal view; numbers are formatted by ``report_data.fmt`` like everywhere else.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from adapmtl_cli.config import SCHEMA_VERSION, ChannelReport, LatencyManifest, RunReport
from adapmtl_cli.report.channels import (
    CHANNEL_HEAD,
    CHANNEL_NOTE,
    CHANNEL_NUMERIC,
    CHANNEL_TITLE,
    ZERO_WEIGHTS_TITLE,
    channel_cells,
    channels_of,
    headline,
)
from adapmtl_cli.report.views import (
    BEST_RULE,
    BOUNDED_SYMBOL,
    LATENCY_TITLE,
    Row,
    RunView,
    bounded_score,
    collapse_line,
    fmt,
    latency_lines,
    layer_scale_note,
    metrics_title,
    per_task_scores,
    relative_change,
    rows,
    score_lines,
    sorted_layers,
)

SECTION_TITLES = {
    "summary": "Summary",
    "component": "Sparsity per component",
    "channel": "Channels, parameters and FLOPs (channel runs; FLOPs of one sample's forward)",
    "metric": "Task metrics on the validation split",
    "delta_t": "Δ_T (higher is better)",
    "collapse": "Collapsed tasks (an error metric > 3× dense, or one predicted class)",
    "score": "Other scores (Δm: lower is better; Δ_p: higher is better)",
    "task_weight": "Final task weights",
    "warning": "Warnings",
    "layer": "Sparsity per layer",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def report_markdown(
    report: RunReport,
    *,
    layers: bool = False,
    sort: str = "model",
    baseline: str | None = None,
    latency: LatencyManifest | None = None,
) -> str:
    """One run as a Markdown document (the numbers of the terminal view; ``latency``: the export's, if given)."""
    ch = channels_of(report)
    run = (
        f"method `{report.method}`, weighting `{report.weighting}`{layer_scale_note(report)}, {report.steps} steps, "
        f"{report.wall_seconds:.0f} s"
    )
    if ch is None:
        lines = [
            f"**Sparsity**: target {report.target_sparsity:.2%}, achieved {report.overall_sparsity:.2%} "
            f"({report.zeros:,} of {report.prunable_params:,} prunable weights); {run}",
        ]
    else:
        lines = [f"**Channels**: {headline(report, ch)}; {run}", *_channel_markdown(ch)]
        lines += ["", f"**{ZERO_WEIGHTS_TITLE}**"]
    lines += ["", "| component | kind | tasks | params | sparsity | threshold |", "|---|---|---|---:|---:|---:|"]
    for c in report.components:
        lines.append(
            f"| {c.name} | {c.kind} | {','.join(c.tasks)} | {c.params:,} | {c.sparsity:.2%} | "
            f"{fmt(c.threshold, 'threshold')} |"
        )
    lines += ["", "| task | metric | better | dense | pruned | change |", "|---|---|---|---:|---:|---:|"]
    for task, tm in report.tasks.items():
        for m, dense in tm.dense.items():
            hib = tm.higher_is_better[m]
            rel = relative_change(dense, tm.pruned[m], hib)
            change = f"{tm.pruned[m] - dense:+.4f}" + (f" ({rel:+.1f}%)" if rel is not None else "")
            lines.append(
                f"| {task} | {m} | {'↑' if hib else '↓'} | {fmt(dense, 'float')} | {fmt(tm.pruned[m], 'float')} | "
                f"{change} |"
            )
    per = per_task_scores(report.delta_t.per_task, report)
    lines += ["", f"**Δ_T** {report.delta_t.overall:+.2f}% ({per}). {report.delta_t.convention}; "]
    lines[-1] += baseline or "baseline: the dense model on the validation split"
    if report.delta_t.skipped:
        lines[-1] += f"; skipped (dense value 0): {', '.join(report.delta_t.skipped)}"
    lines += _bounded_markdown(report)
    lines += [f"\n{line}" for line in score_lines(report)]
    if report.task_weights:
        weights = ", ".join(f"{t} {fmt(w, 'float')}" for t, w in report.task_weights.items())
        lines += ["", f"Task weights at the last step: {weights}"]
    for w in report.warnings:
        lines += ["", f"> warning: {w}"]
    if latency is not None:
        lines += ["", f"**{LATENCY_TITLE}**", "", *(f"- {line}" for line in latency_lines(latency))]
    if layers:
        lines += ["", "| layer | component | params | sparsity | threshold |", "|---|---|---:|---:|---:|"]
        for x in sorted_layers(report, sort):
            lines.append(
                f"| {x.name} | {x.component} | {x.params:,} | {x.sparsity:.2%} | {fmt(x.threshold, 'threshold')} |"
            )
    return "\n".join(lines) + "\n"


def _channel_markdown(ch: ChannelReport) -> list[str]:
    """The channel table of a channel run (a row per component, then the total) and its note."""
    lines = ["", f"**{CHANNEL_TITLE}**", "", "| " + " | ".join(CHANNEL_HEAD) + " |"]
    lines.append("|" + "".join("---:|" if n else "---|" for n in CHANNEL_NUMERIC))
    lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in channel_cells(ch)]
    return [*lines, "", CHANNEL_NOTE]


def _bounded_markdown(report: RunReport) -> list[str]:
    """The bounded Δ_T and the collapse line under Δ_T; nothing for reports written before them."""
    lines = []
    bounded = bounded_score(report)
    if bounded is not None:
        per = per_task_scores(bounded.per_task, report)
        lines += ["", f"**{BOUNDED_SYMBOL}** {bounded.overall:+.2f}% ({per}). {bounded.convention}"]
    collapsed = collapse_line(report)
    if collapsed is not None:
        label, _, rest = collapsed.partition(": ")
        lines += ["", f"**{label}**: {rest}"]
    return lines


def compare_markdown(runs: Sequence[RunView], *, layers: bool = False, sort: str = "model") -> str:
    """Runs side by side, one column each, one table per section; the best value of a row in bold."""
    labels = [r.label for r in runs]
    lines = [f"Comparing {len(runs)} runs; {BEST_RULE} (**bold**)."]
    section = None
    for row in rows(runs, layers=layers, sort=sort):
        if not row.human:
            continue
        if row.section != section:
            section = row.section
            title = metrics_title([r.eval_split for r in runs]) if section == "metric" else SECTION_TITLES[section]
            lines += ["", f"### {title}", ""]
            lines.append("| | " + " | ".join(_cell(x) for x in labels) + " |")
            lines.append("|---|" + "---:|" * len(labels))
        best = row.best()
        cells = [f"**{fmt(v, row.kind)}**" if i in best else _cell(fmt(v, row.kind)) for i, v in enumerate(row.values)]
        lines.append(f"| {_cell(row.label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_csv(runs: Sequence[RunView], *, layers: bool = True, sort: str = "model") -> str:
    """Long-format CSV: ``section,name,field`` and a full-precision value per run (``value`` for one run).

    A comparison adds a ``best`` column naming the best run(s) of each row, ``;``-separated.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    compare = len(runs) > 1
    writer.writerow(
        ["section", "name", "field", *([r.label for r in runs] if compare else ["value"])]
        + (["best"] if compare else [])
    )
    for row in rows(runs, layers=layers, sort=sort):
        values = ["" if v is None else v for v in row.values]
        extra = [";".join(runs[i].label for i in sorted(row.best()))] if compare else []
        writer.writerow([row.section, row.name, row.field, *values, *extra])
    return buf.getvalue()


def compare_json(runs: Sequence[RunView], *, sort: str = "model") -> str:
    """Every run's ``report.json`` plus the comparison rows (values keyed by run label, best labels)."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "runs": [
            {"label": r.label, "path": str(r.path) if r.path else None, "report": r.report.model_dump(mode="json")}
            for r in runs
        ],
        "rows": [_row_json(row, runs) for row in rows(runs, layers=True, sort=sort)],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _row_json(row: Row, runs: Sequence[RunView]) -> dict[str, object]:
    return {
        "section": row.section,
        "name": row.name,
        "field": row.field,
        "values": {r.label: v for r, v in zip(runs, row.values, strict=True)},
        "better": {1: "higher", -1: "lower", 0: None}[row.better],
        "best": [runs[i].label for i in sorted(row.best())],
    }

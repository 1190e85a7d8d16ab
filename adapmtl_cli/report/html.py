"""The report as one self-contained HTML page: inline CSS, plots as inline PNGs, no script, no network.

The page also embeds the exact ``report.json`` (or the comparison JSON) in a ``<script type="application/json">``
block, so the numbers a reader sees and the numbers a tool reads come from one file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from html import escape

from adapmtl_cli import __version__
from adapmtl_cli.config import ChannelReport, RunReport
from adapmtl_cli.report.channels import (
    CHANNEL_HEAD,
    CHANNEL_NOTE,
    CHANNEL_NUMERIC,
    CHANNEL_TITLE,
    ZERO_WEIGHTS_TITLE,
    channel_cells,
    channels_of,
    headline,
    reduction,
    unit,
)
from adapmtl_cli.report.text import SECTION_TITLES, compare_json
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
    metrics_title,
    per_task_scores,
    relative_change,
    rows,
    score_lines,
    sorted_layers,
)

PLOT_HINT = 'plots need matplotlib: pip install "adapmtl[plot]"'

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2330; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.sub, .note { color: #5b6474; } .note { font-size: .9em; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
.card { border: 1px solid #d8dde6; border-radius: 6px; padding: .6em 1em; flex: 1 1 7em; }
.card .k { color: #5b6474; font-size: .85em; } .card .v { font-size: 1.35em; font-weight: 600; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e4e7ee; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.group td { font-weight: 600; background: #f4f6fa; }
.bar { display: inline-block; width: 90px; height: .7em; background: #e4e7ee; border-radius: 2px; }
.bar i { display: block; height: 100%; background: #3b6fd8; border-radius: 2px; }
.good { color: #16803c; } .bad { color: #c2281d; } .best { font-weight: 700; color: #16803c; }
.warn { color: #9a6700; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #e4e7ee; }
figcaption { color: #5b6474; font-size: .9em; }
"""


def _bar(fraction: float) -> str:
    return f'<span class="bar"><i style="width:{max(0.0, min(1.0, fraction)) * 100:.1f}%"></i></span>'


def _table(head: Sequence[str], body: Sequence[str], numeric: Sequence[bool]) -> str:
    ths = "".join(
        f'<th class="n">{escape(h)}</th>' if n else f"<th>{escape(h)}</th>" for h, n in zip(head, numeric, strict=True)
    )
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _row(cells: Sequence[str], numeric: Sequence[bool], cls: str = "") -> str:
    tds = "".join(f'<td class="n">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(cells, numeric, strict=True))
    return f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>"


def _figures(plots: Sequence[Plot] | None) -> str:
    if plots is None:
        return f'<p class="note">{escape(PLOT_HINT)}</p>'
    out = []
    for plot in plots:
        data = base64.b64encode(plot.png).decode("ascii")
        cap = escape(plot.caption)
        img = f'<img src="data:image/png;base64,{data}" alt="{cap}">'
        out.append(f"<figure>{img}<figcaption>{cap}</figcaption></figure>")
    return "\n".join(out)


def _page(title: str, body: str, data: str) -> str:
    # "</" inside the JSON would end the script element early; JSON allows "<\/" for it.
    safe = data.replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        f'<script type="application/json" id="report-data">{safe}</script>\n</body>\n</html>\n'
    )


def _single(run: RunView, layers: bool, sort: str, plots: Sequence[Plot] | None) -> str:
    r: RunReport = run.report
    dt = r.delta_t
    ch = channels_of(r)
    parts = [
        f"<h1>adapmtl report: {escape(run.label)}</h1>",
        f'<p class="sub">method {escape(r.method)}, weighting {escape(r.weighting)}'
        f"{escape(layer_scale_note(r))}; adapmtl {__version__}</p>",
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="k">{escape(k)}</div><div class="v" id="{i}">{escape(v)}</div></div>'
            for k, v, i in _cards(r)
        )
        + "</div>",
    ]
    if ch is not None:
        parts += _channel_section(r, ch)
    parts += _components(r)
    parts.append(f"<h2>{escape(metrics_title([run.eval_split]))} (dense → pruned)</h2>")
    num = (False, False, False, True, True, True, True)
    body = []
    for task, tm in r.tasks.items():
        for m, dense in tm.dense.items():
            pruned, hib = tm.pruned[m], tm.higher_is_better[m]
            diff = pruned - dense
            cls = "good" if ((diff >= 0) if hib else (diff <= 0)) else "bad"
            rel = relative_change(dense, pruned, hib)
            rel_s = f"{rel:+.1f}%" if rel is not None else "-"
            arrow = "↑ higher" if hib else "↓ lower"
            cells = [escape(task), escape(m), arrow, fmt(dense, "float"), fmt(pruned, "float")]
            cells += [f'<span class="{cls}">{diff:+.4f}</span>', f'<span class="{cls}">{rel_s}</span>']
            body.append(_row(cells, num))
    parts.append(_table(("task", "metric", "better", "dense", "pruned", "change", "relative"), body, num))
    parts.append(_score_paragraph("Δ_T", dt.overall, dt.per_task, r))
    parts += _bounded_paragraphs(r)
    bounded = bounded_score(r)
    conventions = [dt.convention, *([bounded.convention] if bounded else []), run.baseline, *score_lines(r)]
    parts.append(f'<p class="note">{"<br>".join(escape(line) for line in conventions)}</p>')
    if dt.skipped:
        parts.append(f'<p class="note">skipped (dense value 0): {escape(", ".join(dt.skipped))}</p>')
    if r.task_weights:
        weights = ", ".join(f"{escape(t)} {fmt(w, 'float')}" for t, w in r.task_weights.items())
        parts.append(f"<p>Task weights at the last step: {weights}</p>")
    parts += [f'<p class="warn">warning: {escape(w)}</p>' for w in r.warnings]
    if run.latency is not None:
        parts.append(f"<h2>{escape(LATENCY_TITLE)}</h2>")
        parts.append(f'<p class="note">{"<br>".join(escape(line) for line in latency_lines(run.latency))}</p>')
    parts.append("<h2>Plots</h2>")
    parts.append(_figures(plots))
    parts.append(f"<details{' open' if layers else ''}><summary><h2 style='display:inline'>Sparsity per layer</h2>")
    parts.append(f"</summary>{_layers(r, sort)}</details>")
    return _page(f"adapmtl report: {run.label}", "\n".join(parts), r.model_dump_json(indent=2))


def _cards(r: RunReport) -> list[tuple[str, str, str]]:
    """The summary cards: name, value, element id; a channel run's name the target's unit and its sizes."""
    ch = channels_of(r)
    if ch is None:
        head = [
            ("target sparsity", f"{r.target_sparsity:.2%}", "target-sparsity"),
            ("achieved sparsity", f"{r.overall_sparsity:.2%}", "overall-sparsity"),
        ]
    else:
        head = [
            (f"target ({unit(ch)})", f"{r.target_sparsity:.2%}", "target-sparsity"),
            (f"achieved ({unit(ch)})", f"{ch.achieved:.2%}", "channels-achieved"),
            ("weights zero", f"{r.overall_sparsity:.2%}", "overall-sparsity"),
            ("params", f"{reduction(ch.params_before, ch.params_after)} smaller", "params-reduction"),
            ("FLOPs", f"{reduction(ch.flops_before, ch.flops_after)} fewer", "flops-reduction"),
        ]
    return [
        *head,
        ("Δ_T", f"{r.delta_t.overall:+.2f}%", "delta-t"),
        *_bounded_card(r),
        ("prunable weights", f"{r.prunable_params:,}", "prunable-params"),
        ("zeros", f"{r.zeros:,}", "zeros"),
        ("steps", f"{r.steps}", "steps"),
        ("wall time", f"{r.wall_seconds:.0f} s", "wall-seconds"),
    ]


def _channel_section(r: RunReport, ch: ChannelReport) -> list[str]:
    """A channel run's headline in the target's unit and its table: a row per component, then the total."""
    cells = channel_cells(ch)
    body = [
        _row([escape(c) for c in row], CHANNEL_NUMERIC, "group" if i == len(cells) - 1 else "")
        for i, row in enumerate(cells)
    ]
    return [
        f'<p id="channels-headline"><b>Channels</b> {escape(headline(r, ch))}</p>',
        f"<h2>{escape(CHANNEL_TITLE)}</h2>",
        _table(CHANNEL_HEAD, body, CHANNEL_NUMERIC),
        f'<p class="note">{escape(CHANNEL_NOTE)}</p>',
    ]


def _components(r: RunReport) -> list[str]:
    """The sparsity per component (in a channel run: the zero weights the removed channels left)."""
    title = "Sparsity per component" if channels_of(r) is None else ZERO_WEIGHTS_TITLE
    num = (False, False, False, True, True, False, True)
    body = [
        _row(
            [
                escape(c.name),
                escape(c.kind),
                escape(",".join(c.tasks)),
                f"{c.params:,}",
                f"{c.sparsity:.2%}",
                _bar(c.sparsity),
                fmt(c.threshold, "threshold"),
            ],
            num,
        )
        for c in r.components
    ]
    head = ("component", "kind", "tasks", "params", "sparsity", "", "threshold")
    return [f"<h2>{escape(title)}</h2>", _table(head, body, num)]


def _bounded_card(r: RunReport) -> list[tuple[str, str, str]]:
    bounded = bounded_score(r)
    return [] if bounded is None else [(BOUNDED_SYMBOL, f"{bounded.overall:+.2f}%", "delta-t-bounded")]


def _score_paragraph(symbol: str, overall: float, per_task: dict[str, float], r: RunReport) -> str:
    cls = "good" if overall >= 0 else "bad"
    per = escape(per_task_scores(per_task, r))
    return f'<p><b>{escape(symbol)}</b> <span class="{cls}"><b>{overall:+.2f}%</b></span> ({per})</p>'


def _bounded_paragraphs(r: RunReport) -> list[str]:
    """The bounded Δ_T under Δ_T and the collapse line; nothing for reports written before them."""
    out = []
    bounded = bounded_score(r)
    if bounded is not None:
        out.append(_score_paragraph(BOUNDED_SYMBOL, bounded.overall, bounded.per_task, r))
    line = collapse_line(r)
    if line is not None:
        cls = "warn" if collapsed_tasks(r) else "note"
        out.append(f'<p class="{cls}" id="collapsed">{escape(line)}</p>')
    return out


def _layers(r: RunReport, sort: str) -> str:
    num = (False, True, True, False, True)
    body = []
    current = None
    for x in sorted_layers(r, sort):
        if x.component != current:
            current = x.component
            body.append(f'<tr class="group"><td colspan="5">{escape(current)}</td></tr>')
        cells = [escape(x.name), f"{x.params:,}", f"{x.sparsity:.2%}", _bar(x.sparsity), fmt(x.threshold, "threshold")]
        body.append(_row(cells, num))
    return _table(("layer", "params", "sparsity", "", "threshold"), body, num)


def _compare(runs: Sequence[RunView], layers: bool, sort: str, plots: Sequence[Plot] | None) -> str:
    labels = [r.label for r in runs]
    parts = [
        f"<h1>adapmtl: comparing {len(runs)} runs</h1>",
        f'<p class="sub">{escape(BEST_RULE)} (in bold); adapmtl {__version__}</p>',
    ]
    num = (False, *([True] * len(runs)))
    body = []
    section = None
    for row in rows(runs, layers=layers, sort=sort):
        if not row.human:
            continue
        if row.section != section:
            section = row.section
            title = metrics_title([r.eval_split for r in runs]) if section == "metric" else SECTION_TITLES[section]
            body.append(f'<tr class="group"><td colspan="{len(runs) + 1}">{escape(title)}</td></tr>')
        best = row.best()
        cells = [escape(row.label)] + [
            f'<span class="best">{escape(fmt(v, row.kind))}</span>' if i in best else escape(fmt(v, row.kind))
            for i, v in enumerate(row.values)
        ]
        body.append(_row(cells, num))
    parts.append(_table(("", *labels), body, num))
    parts.append(
        '<p class="note">'
        + "<br>".join(escape(f"{r.label}: {r.path if r.path else '-'}; {r.baseline}") for r in runs)
        + "</p>"
    )
    different = baseline_warning(runs)
    if different is not None:
        parts.append(f'<p class="warn">warning: {escape(different)}</p>')
    parts.append("<h2>Plots</h2>")
    parts.append(_figures(plots))
    return _page(f"adapmtl: comparing {', '.join(labels)}", "\n".join(parts), compare_json(runs, sort=sort))


def report_html(
    runs: Sequence[RunView],
    *,
    layers: bool = False,
    sort: str = "model",
    plots: Sequence[Plot] | None = None,
) -> str:
    """The page for one run, or the comparison page for several; ``plots=None`` puts the install hint there."""
    if len(runs) > 1:
        return _compare(runs, layers, sort, plots)
    return _single(runs[0], layers, sort, plots)


def embedded_json(page: str) -> dict[str, object]:
    """The JSON block of a page written by ``report_html`` (for tests and tools)."""
    start = page.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">'
    )
    end = page.index("</script>", start)
    return json.loads(page[start:end])

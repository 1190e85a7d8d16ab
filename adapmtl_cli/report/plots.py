"""Figures of a run (or of several) as PNG bytes, drawn with matplotlib's object API (no pyplot, no global state).

matplotlib is optional (``pip install "adapmtl[plot]"``); ``require_matplotlib`` turns its absence into one
``ConfigError`` line. Every figure is ``SIZE`` pixels, so pages and tests can rely on it. The series over steps
come from ``metrics.jsonl`` (one record every ``--log-every`` steps).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapmtl_cli.config import ChannelReport
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.report.channels import channels_of, removed_fractions, unit
from adapmtl_cli.report.views import Plot, RunView, write_output

INSTALL_HINT = 'matplotlib is not installed; pip install "adapmtl[plot]"'
SIZE = (800, 450)
_DPI = 100
_MAX_LEGEND = 12


def require_matplotlib(what: str) -> None:
    """Raise ``ConfigError`` naming ``what`` needs matplotlib and how to install it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs plots, but {INSTALL_HINT}") from None


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(draw: Callable[[Any], None]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE[0] / _DPI, SIZE[1] / _DPI), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    draw(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _percent_axis(ax: Any, label: str = "sparsity") -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel(label)


def _lines(
    ax: Any, steps: list[int], series: dict[str, list[float]], styles: dict[str, dict[str, Any]] | None = None
) -> None:
    """One line per series; past ``_MAX_LEGEND`` series (per-layer thresholds) thin grey lines, no legend."""
    styles = styles or {}
    many = len(series) > _MAX_LEGEND
    colors = iter(_colors(len(series)))
    for name, ys in series.items():
        style = styles.get(name) or ({"color": "0.6", "lw": 0.8} if many else {"color": next(colors), "lw": 1.6})
        ax.plot(steps, ys, label=None if many and name not in styles else name, **style)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    ax.set_xlabel("step")


def _component_colors(run: RunView) -> dict[str, Any]:
    """One colour per component, the same in every figure of the run."""
    names = [c.name for c in run.report.components]
    names += [x.component for x in run.report.layers if x.component not in names]
    names = list(dict.fromkeys(names))
    return dict(zip(names, _colors(len(names)), strict=True))


def _series(records: Sequence[dict[str, Any]], key: str) -> dict[str, list[float]]:
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r.get(key) or {}))
    return {n: [float((r.get(key) or {}).get(n, math.nan)) for r in records] for n in names}


def _component_series(run: RunView) -> dict[str, list[float]]:
    """Per-component sparsity over steps; threshold groups that are layers are weighted by their size."""
    records = run.metrics
    raw = _series(records, "group_sparsity")
    comps = [c.name for c in run.report.components if c.params]
    if set(raw) <= set(comps):
        return raw
    layer_of = {x.name: x for x in run.report.layers}
    if not set(raw) <= set(layer_of):
        return {}  # one global group: the overall curve says it all
    out: dict[str, list[float]] = {}
    for comp in comps:
        members = [n for n in raw if layer_of[n].component == comp]
        total = sum(layer_of[n].params for n in members)
        if total:
            out[comp] = [sum(raw[n][i] * layer_of[n].params for n in members) / total for i in range(len(records))]
    return out


def run_plots(run: RunView) -> list[Plot]:
    """The figures of one run: sparsity per component and per layer, and every logged series over steps."""
    rep = run.report
    color = _component_colors(run)
    ch = channels_of(rep)
    plots = [] if ch is None else [_channels_plot(run, ch, color)]
    plots.append(_components_plot(run, color))

    def layers(ax: Any) -> None:
        from matplotlib.patches import Patch

        order = list(rep.layers)  # report.json keeps model order
        comps = list(dict.fromkeys(x.component for x in order))
        ax.bar(range(len(order)), [x.sparsity for x in order], width=0.85, color=[color[x.component] for x in order])
        handles = [Patch(color=color[c], label=c) for c in comps]
        ax.figure.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=min(len(comps), 5))
        ax.set_xticks([])
        ax.set_xlabel(f"{len(order)} prunable layers in model order")
        ax.set_ylim(0, 1.05)
        _percent_axis(ax)
        ax.set_title(f"{run.label}: sparsity per layer, coloured by component")

    plots.append(
        Plot("sparsity_layers.png", "Sparsity per layer (model order, coloured by component)", _figure(layers))
    )
    records = [r for r in run.metrics if r.get("sparsity") is not None]
    if not records:
        return plots
    steps = [int(r["step"]) for r in records]

    # A channel run's target counts channels (or FLOPs) while the measured curves count zero weights: say so.
    overall, target = ("overall", "target") if ch is None else ("weights zero", f"target (of {unit(ch)})")

    def sparsity_steps(ax: Any) -> None:
        comps = _component_series(RunView(run.label, rep, metrics=records))
        series = {overall: [float(r["sparsity"]) for r in records], **comps}
        series[target] = [float(r["target"]) for r in records]
        styles = {overall: {"color": "k", "lw": 2.2}, target: {"color": "0.45", "ls": "--", "lw": 1.2}}
        styles.update({c: {"color": color[c], "lw": 1.4} for c in comps})
        _lines(ax, steps, series, styles)
        _percent_axis(ax)
        ax.set_title(f"{run.label}: sparsity over steps")

    plots.append(Plot("sparsity_steps.png", "Overall and per-component sparsity over steps", _figure(sparsity_steps)))
    for key, fname, caption, log in (
        ("thresholds", "thresholds_steps.png", "Thresholds over steps", True),
        ("task_weights", "task_weights_steps.png", "Task-loss weights over steps", False),
        ("task_losses", "task_losses_steps.png", "Task losses over steps", True),
    ):
        series = _series(records, key)
        if not series:
            continue

        def draw(ax: Any, series: dict[str, list[float]] = series, caption: str = caption, log: bool = log) -> None:
            _lines(ax, steps, series, {k: {"color": color[k], "lw": 1.6} for k in series if k in color})
            if log and all(v > 0 for ys in series.values() for v in ys if math.isfinite(v)):
                ax.set_yscale("log")
            ax.set_title(f"{run.label}: {caption.lower()}")

        plots.append(Plot(fname, caption, _figure(draw)))
    return plots


def _components_plot(run: RunView, color: dict[str, Any]) -> Plot:
    """Sparsity per component against the target; a channel run's zero weights, with no target (another unit)."""
    rep = run.report
    channel = channels_of(rep) is not None

    def components(ax: Any) -> None:
        comps = [c for c in rep.components if c.params]
        bars = ax.bar([c.name for c in comps], [c.sparsity for c in comps], color=[color[c.name] for c in comps])
        ax.bar_label(bars, labels=[f"{c.sparsity:.1%}" for c in comps], fontsize="small")
        if not channel:
            ax.axhline(rep.target_sparsity, color="k", ls="--", lw=1, label=f"target {rep.target_sparsity:.1%}")
            ax.legend(fontsize="small", loc="lower right")
        ax.set_ylim(0, 1.05)
        _percent_axis(ax, "zero weights" if channel else "sparsity")
        what = "zero weights left by the removed channels" if channel else "sparsity"
        ax.set_title(f"{run.label}: {what} per component (overall {rep.overall_sparsity:.2%})")

    caption = "Zero weights per component (left by the removed channels)" if channel else "Sparsity per component"
    return Plot("sparsity_components.png", caption, _figure(components))


def _channels_plot(run: RunView, ch: ChannelReport, color: dict[str, Any]) -> Plot:
    """A channel run's removed share of channels per component; the target line where it counts channels."""
    removed = removed_fractions(ch)

    def draw(ax: Any) -> None:
        names = list(removed)
        bars = ax.bar(names, [removed[n] for n in names], color=[color.get(n, "C0") for n in names])
        ax.bar_label(bars, labels=[f"{removed[n]:.1%}" for n in names], fontsize="small")
        target = f"target {run.report.target_sparsity:.1%} of {unit(ch)}"
        if ch.target == "channels":
            ax.axhline(run.report.target_sparsity, color="k", ls="--", lw=1, label=target)
            ax.legend(fontsize="small", loc="lower right")
        ax.set_ylim(0, 1.05)
        _percent_axis(ax, "channels removed")
        achieved = f"achieved {ch.achieved:.1%} of {unit(ch)}"
        ax.set_title(f"{run.label}: channels removed per component ({target} → {achieved})")

    return Plot("channels_components.png", "Channels removed per component", _figure(draw))


def compare_plots(runs: Sequence[RunView]) -> list[Plot]:
    """Figures putting runs side by side: sparsity per component, Δ_T per task, overall sparsity over steps."""
    colors = _colors(len(runs))

    def grouped(ax: Any, groups: list[str], value: Callable[[RunView, str], float | None]) -> None:
        width = 0.8 / len(runs)
        for i, (run, color) in enumerate(zip(runs, colors, strict=True)):
            vals = [value(run, g) for g in groups]
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(groups))]
            ax.bar(xs, [math.nan if v is None else v for v in vals], width=width, color=color, label=run.label)
        ax.set_xticks(range(len(groups)), groups)
        ax.legend(fontsize="small", loc="best")

    comps = list(dict.fromkeys(c.name for r in runs for c in r.report.components if c.params))

    def components(ax: Any) -> None:
        def value(run: RunView, comp: str) -> float | None:
            return next((c.sparsity for c in run.report.components if c.name == comp), None)

        grouped(ax, ["overall", *comps], lambda r, g: r.report.overall_sparsity if g == "overall" else value(r, g))
        ax.set_ylim(0, 1.05)
        _percent_axis(ax)
        ax.set_title("sparsity per component")

    tasks = list(dict.fromkeys(t for r in runs for t in r.report.delta_t.per_task))

    def delta(ax: Any) -> None:
        grouped(
            ax,
            [*tasks, "overall"],
            lambda r, t: r.report.delta_t.overall if t == "overall" else r.report.delta_t.per_task.get(t),
        )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("Δ_T (%), higher is better")
        ax.set_title("Δ_T per task against each run's dense baseline")

    def steps(ax: Any) -> None:
        for run, color in zip(runs, colors, strict=True):
            recs = [r for r in run.metrics if r.get("sparsity") is not None]
            ax.plot([r["step"] for r in recs], [r["sparsity"] for r in recs], color=color, label=run.label)
        ax.legend(fontsize="small", loc="best")
        ax.set_xlabel("step")
        _percent_axis(ax)
        ax.set_title("overall sparsity over steps")

    return [
        Plot("compare_sparsity_components.png", "Sparsity per component, per run", _figure(components)),
        Plot("compare_delta_t.png", "Δ_T per task, per run", _figure(delta)),
        Plot("compare_sparsity_steps.png", "Overall sparsity over steps, per run", _figure(steps)),
    ]


def figures(runs: Sequence[RunView]) -> list[Plot]:
    """``run_plots`` for one run, ``compare_plots`` for several."""
    return compare_plots(runs) if len(runs) > 1 else run_plots(runs[0])


def write_plots(plots: Sequence[Plot], folder: Path) -> list[Path]:
    """Write each figure to ``folder/<name>`` (atomically); return the paths."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--plot {str(folder)!r} is a file; pass a folder")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for plot in plots:
        path = folder / plot.name
        write_output(path, plot.png)
        out.append(path)
    return out

"""``adapmtl report`` and ``export``: show what a run did, and write its model files (and say what they hold)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from adapmtl_cli.config import LATENCY_BATCH, LATENCY_REPEATS, LATENCY_THREADS

REPORT_EPILOG = (
    "Examples: adapmtl report runs/a --layers --sort sparsity  |  adapmtl report runs/a --format html "
    "--output report.html  |  adapmtl report runs/a runs/b --compare  |  adapmtl report runs/a --plot plots/"
)
EXPORT_EPILOG = (
    "Examples: adapmtl export runs/a --onnx  |  adapmtl export runs/a --onnx --shrink --sparse-initializers  |  "
    "adapmtl export runs/a --onnx --latency-batch 16 --latency-threads 4  |  "
    "adapmtl export runs/a --onnx --latency-input 3x288x384  |  "
    "adapmtl export --densify runs/a/export/model.sparse.safetensors dense.safetensors"
)


def report(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN", help="Run folder written by `adapmtl prune` (several with --compare)."
    ),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="table, json, markdown, csv or html (default: table, or --output's suffix)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Short for --format json (prints report.json)."),
    markdown: bool = typer.Option(False, "--markdown", help="Short for --format markdown."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the report to this file instead."),
    layers: bool = typer.Option(False, "--layers", help="Add the per-layer sparsity table, grouped by component."),
    sort: str = typer.Option("model", "--sort", help="Layer order within a component: model, sparsity, params, name."),
    compare: bool = typer.Option(False, "--compare", help="Runs side by side, one column each, best value marked."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write PNG figures to this folder (needs matplotlib)."),
) -> None:
    """Show per-component and per-layer sparsity, task metrics before and after, and Δ_T; compare runs."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.preflight import check_run_folders
    from adapmtl_cli.errors import ConfigError
    from adapmtl_cli.report.formats import resolve_format

    fmt_name = resolve_format(fmt, as_json=as_json, markdown=markdown, output=output, sort=sort)
    if len(runs) > 1 and not compare:
        raise ConfigError(f"got {len(runs)} run folders; pass --compare to put them side by side")
    check_run_folders(runs)  # options and paths before torch loads
    from adapmtl_cli.report import plots
    from adapmtl_cli.report.terminal import render_text, terminal_renderable
    from adapmtl_cli.report.views import baseline_warning, load_runs, write_output

    if plot is not None:
        plots.require_matplotlib("--plot")
    views = load_runs(runs)
    different = baseline_warning(views) if len(views) > 1 else None
    if different is not None and fmt_name not in ("table", "html"):  # those two show it in the page itself
        ui.warn(different)
    figures = None
    if plot is not None or fmt_name == "html":
        if plots.have_matplotlib():
            figures = plots.figures(views)
        else:
            ui.warn(f"the HTML page has no plots: {plots.INSTALL_HINT}")
    if output is not None:
        write_output(output, render_text(views, fmt_name, layers=layers, sort=sort, plots=figures))
        ui.success(f"wrote {output} ({fmt_name})")
    elif fmt_name == "table":
        ui.show(terminal_renderable(views, layers=layers, sort=sort))
    else:
        ui.plain(render_text(views, fmt_name, layers=layers, sort=sort, plots=figures))
    if plot is not None and figures is not None:
        written = plots.write_plots(figures, plot)
        names = ", ".join(p.name for p in written)
        ui.success(f"wrote {len(written)} figures to {plot}: {names}", stderr=output is None and fmt_name != "table")


def export(
    run: Path = typer.Argument(..., help="Run folder written by `adapmtl prune` (with --densify: a sparse file)."),
    dest: Path | None = typer.Argument(None, help="With --densify: the dense safetensors file to write."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx, checked with onnxruntime."),
    exporter: str = typer.Option("dynamo", "--exporter", help="ONNX exporter: dynamo, or legacy if dynamo fails."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the files (default RUN/export)."),
    densify: bool = typer.Option(False, "--densify", help="Decode a sparse safetensors file into a dense one."),
    values_dtype: str | None = typer.Option(
        None, "--values-dtype", help="Store the sparse file's float values as fp16 or bf16 (default: as trained)."
    ),
    sparse_initializers: bool = typer.Option(
        False, "--sparse-initializers", help="Store mostly-zero ONNX weights as sparse initializers (int64 indices)."
    ),
    shrink: bool = typer.Option(
        False, "--shrink", help="Remove all-zero channels where the graph allows; write model.shrunk.onnx."
    ),
    latency: bool = typer.Option(
        True,
        "--latency/--no-latency",
        help=f"Time each ONNX file against the dense checkpoint in onnxruntime (CPU; median of {LATENCY_REPEATS}).",
    ),
    latency_batch: int | None = typer.Option(
        None, "--latency-batch", help=f"Batch size the latency is timed at, besides 1 (default {LATENCY_BATCH})."
    ),
    latency_threads: int | None = typer.Option(
        None, "--latency-threads", help=f"onnxruntime intra-op threads for the latency (default {LATENCY_THREADS})."
    ),
    latency_input: str | None = typer.Option(
        None,
        "--latency-input",
        help="Time at this input size instead of the run's, e.g. 3x288x384 (your deployment resolution): "
        "each model is re-exported at it for the timing only.",
    ),
) -> None:
    """Write model.safetensors (dense, exact zeros, your state_dict keys), model.sparse.safetensors and ONNX."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.preflight import check_run_folders
    from adapmtl_cli.errors import ConfigError

    if densify:
        if dest is None:
            raise ConfigError("--densify needs two paths: SPARSE.safetensors DENSE.safetensors")
        if not run.is_file():  # before torch loads
            raise ConfigError(f"sparse file {str(run)!r} does not exist")
        from adapmtl_cli.jobs.export import densify_file

        n = densify_file(run, dest)
        ui.success(f"wrote {dest} ({n / 1e6:.2f} MB), decoded from {run}")
        return
    if dest is not None:
        raise ConfigError(f"unexpected second path {str(dest)!r}; only `export --densify` takes two paths")
    check_run_folders([run])  # before torch loads
    from adapmtl_cli.jobs.export import export_run
    from adapmtl_cli.jobs.export_latency import parse_input_shape

    try:
        timed_input = None if latency_input is None else parse_input_shape(latency_input)
    except ValueError as exc:
        raise ConfigError(f"--latency-input {exc}") from exc

    manifest = export_run(
        run,
        out_dir=out,
        onnx=onnx,
        exporter=exporter,
        values_dtype=values_dtype,
        sparse_initializers=sparse_initializers,
        shrink=shrink,
        latency=latency,
        latency_batch=latency_batch,
        latency_threads=latency_threads,
        latency_input=timed_input,
        phase=ui.spinner,
    )
    show_export(manifest)


def show_export(manifest: Any, *, quiet: bool = False) -> None:
    """What an export wrote (an ``ExportManifest``): each file with its size and check, zero filters, shrinking,
    and the onnxruntime latency against the dense model when it was measured.

    ``quiet`` leaves out the ``•`` line about all-zero filters (``demo -q``).
    """
    from adapmtl_cli.cli import ui

    if manifest is None:
        return
    ui.success(f"dense  {manifest.dense} ({manifest.dense_bytes / 1e6:.2f} MB)")
    ratio = manifest.sparse_bytes / max(1, manifest.dense_bytes)
    exact = "decodes bit-exactly"
    if manifest.sparse_values_dtype:
        exact += f" to the weights rounded to {manifest.sparse_values_dtype}"
    ui.success(f"sparse {manifest.sparse} ({manifest.sparse_bytes / 1e6:.2f} MB, {ratio:.1%} of dense; {exact})")
    if manifest.onnx:
        extras = [f"{manifest.onnx_exporter} exporter, opset {manifest.onnx_opset}"]
        if manifest.onnx_sparse_initializers:
            extras.append(f"{manifest.onnx_sparse_initializers} sparse initializers")
        if manifest.onnx_external_data:
            extras.append(f"weights in {manifest.onnx_external_data}")
        ui.success(f"onnx   {manifest.onnx} ({manifest.onnx_bytes / 1e6:.2f} MB; {', '.join(extras)})")
        _show_parity(manifest, manifest.onnx_max_abs_diff, manifest.onnx_parity)
    if not quiet:
        _show_zero_filters(manifest.zero_filters)
    if manifest.shrink is not None:
        _show_shrink(manifest)
    if manifest.channels is not None:
        _show_channels(manifest)
    if manifest.latency is not None:
        from adapmtl_cli.report.views import latency_lines

        for line in latency_lines(manifest.latency):
            ui.status(line)


def _show_zero_filters(zero: dict[str, int]) -> None:
    from adapmtl_cli.cli import ui

    if zero:
        worst = sorted(zero, key=zero.__getitem__, reverse=True)
        named = ", ".join(f"{name} {zero[name]}" for name in worst[:3]) + (", ..." if len(worst) > 3 else "")
        ui.status(f"all-zero filters: {sum(zero.values())} in {len(zero)} layers ({named})")
    else:
        ui.status("all-zero filters: none")


def _show_parity(manifest: Any, worst: float, per_output: dict[str, float]) -> None:
    from adapmtl_cli.cli import ui

    sizes = f" (batch sizes {manifest.onnx_batch_sizes})" if manifest.onnx_batch_sizes else ""
    ui.success(f"       onnxruntime parity max abs diff {worst:.2e}{sizes}")
    for name, diff in per_output.items():
        ui.plain(f"         {name:<16} {diff:.2e}")


def _show_shrink(manifest: Any) -> None:
    from adapmtl_cli.cli import ui

    shrink = manifest.shrink
    if shrink.status != "shrunk":
        ui.plain(f"• shrink: {shrink.reason}")  # plain: the reason may quote a user's error text
        return
    removed = sum(shrink.removed_channels.values())
    ui.success(
        f"shrunk {shrink.onnx} ({shrink.onnx_bytes / 1e6:.2f} MB): {removed} channels removed in "
        f"{len(shrink.removed_channels)} layers; params {shrink.params_before:,} -> {shrink.params_after:,} "
        f"({shrink.params_after / max(1, shrink.params_before):.1%}), FLOPs {shrink.flops_before / 1e6:,.1f}M -> "
        f"{shrink.flops_after / 1e6:,.1f}M ({shrink.flops_after / max(1, shrink.flops_before):.1%}); "
        f"PyTorch max abs diff {shrink.max_abs_diff:.2e}"
    )
    _show_parity(manifest, shrink.onnx_max_abs_diff, shrink.onnx_parity)


def _show_channels(manifest: Any) -> None:
    """A channel run's physically smaller model: its weights, plan and ONNX file, with the sizes it saves."""
    from adapmtl_cli.cli import ui

    ch = manifest.channels
    ui.success(
        f"smaller {ch.weights} ({ch.weights_bytes / 1e6:.2f} MB): params {ch.params_before:,} -> {ch.params_after:,} "
        f"({ch.params_before / max(1, ch.params_after):.2f}x fewer), FLOPs {ch.flops_before / 1e6:,.1f}M -> "
        f"{ch.flops_after / 1e6:,.1f}M ({ch.flops_before / max(1, ch.flops_after):.2f}x fewer); "
        f"PyTorch max abs diff {ch.max_abs_diff:.2e}"
    )
    ui.status(f"plan   {ch.plan} (load it with adapmtl_cli.load_pruned(your_model, export_folder))")
    if ch.onnx:
        ui.success(f"onnx   {ch.onnx} ({ch.onnx_bytes / 1e6:.2f} MB; the smaller model)")
        _show_parity(manifest, ch.onnx_max_abs_diff, ch.onnx_parity)

"""Report loading and rendering (Markdown and the rich view) on the shared pruned run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from adapmtl_cli.config import RunReport
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.report import load_report, report_markdown, report_renderable

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import COMPONENTS, CliRun, copy_run, read_report  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


def _fmt(v: float) -> str:
    """How the renderers print a metric value (4 decimals, 2 from 100 on)."""
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"


def _render(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def report(pruned_run: CliRun) -> RunReport:
    return load_report(pruned_run.path)


def test_load_report_reads_report_json(report: RunReport, pruned_run: CliRun) -> None:
    assert report == read_report(pruned_run.path)


def test_load_report_on_an_unfinished_run(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")
    (run / "report.json").unlink()
    with pytest.raises(ConfigError, match="has not finished"):
        load_report(run)


def test_load_report_on_a_damaged_report(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")
    (run / "report.json").write_text('{"method": "adapmtl"}')
    with pytest.raises(ConfigError, match="not a valid RunReport"):
        load_report(run)


def test_markdown_has_every_component_and_metric(report: RunReport) -> None:
    md = report_markdown(report)
    for c in report.components:
        assert f"| {c.name} | {c.kind} |" in md
        assert f"{c.sparsity:.2%}" in md
    for task, tm in report.tasks.items():
        for metric, dense in tm.dense.items():
            assert f"| {task} | {metric} |" in md
            row = next(line for line in md.splitlines() if line.startswith(f"| {task} | {metric} |"))
            assert row.endswith(f"| {_fmt(dense)} | {_fmt(tm.pruned[metric])} |"), row
    assert f"achieved {report.overall_sparsity:.2%}" in md
    assert f"**Δ_T** {report.delta_t.overall:+.2f}%" in md


def test_renderable_shows_sparsity_components_and_metrics(report: RunReport) -> None:
    text = _render(report_renderable(report))
    assert f"{report.overall_sparsity:.2%}" in text
    assert f"target {report.target_sparsity:.2%}" in text
    for name in COMPONENTS:
        assert name in text
    for tm in report.tasks.values():
        for metric, dense in tm.dense.items():
            assert metric in text and _fmt(dense) in text and _fmt(tm.pruned[metric]) in text
    assert f"{report.delta_t.overall:+.2f}%" in text
    assert "\x1b[" not in text  # colour off
    assert report.layers[0].name not in text


def test_renderable_with_layers_lists_every_layer(report: RunReport) -> None:
    text = _render(report_renderable(report, layers=True))
    for layer in report.layers:
        assert layer.name in text


def test_renderable_shows_warnings() -> None:
    base = RunReport.model_validate_json(
        RunReport(
            method="adapmtl",
            weighting="adaptive",
            target_sparsity=0.5,
            overall_sparsity=0.5,
            prunable_params=10,
            zeros=5,
            steps=1,
            wall_seconds=0.0,
            components=[],
            layers=[],
            tasks={},
            delta_t={"per_task": {}, "overall": 0.0, "convention": "c"},
            task_weights={},
            warnings=["2 modules are reached by no task and were not pruned"],
        ).model_dump_json()
    )
    text = _render(report_renderable(base))
    assert "warning: 2 modules are reached by no task" in text
    assert "50.00%" in text

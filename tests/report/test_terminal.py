"""Report loading and rendering: exact Markdown/CSV of a tiny hand-made report, the rich views on the shared run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from adapmtl_cli.config import RunReport, ScoreEntry
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.report.html import report_html
from adapmtl_cli.report.terminal import compare_renderable, load_report, report_markdown, report_renderable
from adapmtl_cli.report.text import compare_markdown, report_csv
from adapmtl_cli.report.views import RunView
from adapmtl_cli.tasks.scores import COLLAPSE_CONVENTION

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
            row = next(line for line in md.splitlines() if line.startswith(f"| {task} | {metric} |"))
            assert f"| {_fmt(dense)} | {_fmt(tm.pruned[metric])} | {tm.pruned[metric] - dense:+.4f}" in row, row
    assert f"achieved {report.overall_sparsity:.2%}" in md
    assert f"**Δ_T** {report.delta_t.overall:+.2f}%" in md


def _tiny(**update: object) -> RunReport:
    rep = RunReport(
        method="adapmtl",
        weighting="adaptive",
        layer_scale="saliency",
        target_sparsity=0.5,
        overall_sparsity=0.5,
        prunable_params=200,
        zeros=100,
        steps=10,
        wall_seconds=3.2,
        components=[
            {
                "name": "backbone",
                "kind": "backbone",
                "tasks": ["seg", "depth"],
                "params": 120,
                "zeros": 72,
                "sparsity": 0.6,
                "threshold": 0.0123,
            },
            {
                "name": "head:seg",
                "kind": "head",
                "tasks": ["seg"],
                "params": 80,
                "zeros": 28,
                "sparsity": 0.35,
                "threshold": 0.02,
            },
        ],
        layers=[
            {"name": "enc.conv2", "component": "backbone", "params": 100, "zeros": 65, "sparsity": 0.65},
            {"name": "head.seg", "component": "head:seg", "params": 80, "zeros": 28, "sparsity": 0.35},
            {"name": "enc.conv10", "component": "backbone", "params": 20, "zeros": 7, "sparsity": 0.35},
        ],
        tasks={
            "seg": {"dense": {"miou": 0.5}, "pruned": {"miou": 0.55}, "higher_is_better": {"miou": True}},
            "depth": {"dense": {"abs_err": 0.2}, "pruned": {"abs_err": 0.25}, "higher_is_better": {"abs_err": False}},
        },
        delta_t={"per_task": {"seg": 10.0, "depth": -25.0}, "overall": -7.5, "convention": "conv"},
        task_weights={"seg": 0.8, "depth": 1.2},
    )
    return rep.model_copy(update=update)


TINY_MARKDOWN = """\
**Sparsity**: target 50.00%, achieved 50.00% (100 of 200 prunable weights); method `adapmtl`, \
weighting `adaptive`, layer scale saliency, 10 steps, 3 s

| component | kind | tasks | params | sparsity | threshold |
|---|---|---|---:|---:|---:|
| backbone | backbone | seg,depth | 120 | 60.00% | 0.0123 |
| head:seg | head | seg | 80 | 35.00% | 0.02 |

| task | metric | better | dense | pruned | change |
|---|---|---|---:|---:|---:|
| seg | miou | ↑ | 0.5000 | 0.5500 | +0.0500 (+10.0%) |
| depth | abs_err | ↓ | 0.2000 | 0.2500 | +0.0500 (-25.0%) |

**Δ_T** -7.50% (seg +10.00, depth -25.00). conv; baseline: B

Task weights at the last step: seg 0.8000, depth 1.2000

| layer | component | params | sparsity | threshold |
|---|---|---:|---:|---:|
| enc.conv2 | backbone | 100 | 65.00% | - |
| enc.conv10 | backbone | 20 | 35.00% | - |
| head.seg | head:seg | 80 | 35.00% | - |
"""


def test_markdown_of_a_tiny_report_exactly() -> None:
    assert report_markdown(_tiny(), layers=True, sort="sparsity", baseline="baseline: B") == TINY_MARKDOWN


def _honest(collapsed: dict[str, bool] | None = None) -> RunReport:
    """The tiny report with the bounded Δ_T (depth clipped from -250 % to -100 %) and the collapse flags."""
    bounded = ScoreEntry(overall=-45.0, per_task={"seg": 10.0, "depth": -100.0}, higher_is_better=True, convention="bc")
    flags = {"seg": False, "depth": True} if collapsed is None else collapsed
    return _tiny(scores={"delta_t_bounded": bounded}, collapsed=flags)


HONEST_SCORES = f"""\
**Δ_T** -7.50% (seg +10.00, depth -25.00 (collapsed)). conv; baseline: B

**bounded Δ_T** -45.00% (seg +10.00, depth -100.00 (collapsed)). bc

**collapsed tasks**: depth ({COLLAPSE_CONVENTION})

Task weights at the last step: seg 0.8000, depth 1.2000
"""


def test_older_reports_have_no_bounded_score_nor_collapse_flags() -> None:
    old = RunReport.model_validate_json(_tiny().model_dump_json(exclude={"collapsed", "scores"}))
    assert old.collapsed == {} and old.scores == {}
    assert report_markdown(old, layers=True, sort="sparsity", baseline="baseline: B") == TINY_MARKDOWN


def test_markdown_shows_the_bounded_score_beside_delta_t_and_marks_collapsed_tasks() -> None:
    md = report_markdown(_honest(), baseline="baseline: B")
    head = TINY_MARKDOWN[: TINY_MARKDOWN.index("**Δ_T**")]
    assert md == head + HONEST_SCORES


def test_markdown_says_when_no_task_collapsed() -> None:
    md = report_markdown(_honest({"seg": False, "depth": False}), baseline="baseline: B")
    assert "**Δ_T** -7.50% (seg +10.00, depth -25.00). conv; baseline: B" in md.splitlines()
    assert f"**collapsed tasks**: none ({COLLAPSE_CONVENTION})" in md.splitlines()
    assert "(collapsed)" not in md


def test_table_shows_the_bounded_score_and_the_collapse_line() -> None:
    lines = [line.rstrip() for line in _render(report_renderable(_honest())).splitlines()]
    at = lines.index("Δ_T -7.50%  (seg +10.00, depth -25.00 (collapsed))")
    assert lines[at + 1] == "bounded Δ_T -45.00%  (seg +10.00, depth -100.00 (collapsed))"
    assert lines[at + 2].startswith("collapsed tasks: depth (a task collapses when an error metric")
    assert "bc" in lines and lines.index("conv") < lines.index("bc") < lines.index(
        "baseline: the dense model on the validation split"
    )


def test_compare_lists_the_bounded_score_and_the_flags_per_run() -> None:
    md = compare_markdown([RunView("a", _honest()), RunView("b", _tiny())]).splitlines()
    assert "| Δ_T overall | -7.50 | -7.50 |" in md  # unchanged
    assert "| bounded Δ_T depth | -100.00 | - |" in md
    assert "| bounded Δ_T overall | -45.00 | - |" in md
    assert "### Collapsed tasks (an error metric > 3× dense, or one predicted class)" in md
    assert "| collapsed seg | no | - |" in md and "| collapsed depth | yes | - |" in md
    both = compare_markdown([RunView("a", _honest()), RunView("b", _honest({"seg": False, "depth": False}))])
    assert "| collapsed depth | yes | no |" in both.splitlines()
    text = _render(compare_renderable([RunView("a", _honest()), RunView("b", _tiny())]))
    assert any("bounded Δ_T overall" in x and "-45.00" in x for x in text.splitlines())
    assert any("collapsed depth" in x and "yes" in x for x in text.splitlines())


def test_csv_carries_the_bounded_score_and_the_flags() -> None:
    lines = report_csv([RunView("a", _honest())], layers=False).splitlines()
    at = lines.index("delta_t,Δ_T,skipped,")
    assert lines[at + 1 : at + 6] == [
        "delta_t,bounded Δ_T,seg,10.0",
        "delta_t,bounded Δ_T,depth,-100.0",
        "delta_t,bounded Δ_T,overall,-45.0",
        "collapse,collapsed,seg,no",
        "collapse,collapsed,depth,yes",
    ]
    old = report_csv([RunView("a", _tiny())], layers=False)
    assert "bounded" not in old and "collapse" not in old


def test_html_shows_the_bounded_score_and_the_collapse_line() -> None:
    page = report_html([RunView("a", _honest())])
    assert '<div class="k">bounded Δ_T</div><div class="v" id="delta-t-bounded">-45.00%</div>' in page
    assert '<b>bounded Δ_T</b> <span class="bad"><b>-45.00%</b></span> (seg +10.00, depth -100.00 (collapsed))' in page
    assert '<p class="warn" id="collapsed">collapsed tasks: depth (' in page
    calm = report_html([RunView("a", _honest({"seg": False, "depth": False}))])
    assert '<p class="note" id="collapsed">collapsed tasks: none (' in calm
    old = report_html([RunView("a", _tiny())])
    assert "delta-t-bounded" not in old and 'id="collapsed"' not in old
    assert '<p><b>Δ_T</b> <span class="bad"><b>-7.50%</b></span> (seg +10.00, depth -25.00)</p>' in old


def test_compare_markdown_bolds_the_best_value_only_where_runs_differ() -> None:
    md = compare_markdown([RunView("a", _tiny()), RunView("b", _tiny(overall_sparsity=0.4, wall_seconds=1.0))])
    lines = md.splitlines()
    assert lines[0].startswith("Comparing 2 runs; best per row: higher overall sparsity")
    assert "| achieved sparsity | **50.00%** | 40.00% |" in lines
    assert "| wall time | 3 s | **1 s** |" in lines
    assert "| target sparsity | 50.00% | 50.00% |" in lines  # a setting: never bold
    assert "| seg miou ↑ pruned | 0.5500 | 0.5500 |" in lines  # a tie: nobody is best
    assert "| Δ_T overall | -7.50 | -7.50 |" in lines
    assert not any("enc.conv2" in line for line in lines)


def test_compare_handles_runs_with_different_components() -> None:
    other = _tiny(components=_tiny().components[:1])
    md = compare_markdown([RunView("a", _tiny()), RunView("b", other)])
    assert "| head:seg sparsity | 35.00% | - |" in md.splitlines()


def test_csv_of_a_tiny_report_starts_with_the_summary_at_full_precision() -> None:
    lines = report_csv([RunView("a", _tiny())]).splitlines()
    assert lines[:6] == [
        "section,name,field,value",
        "summary,,method,adapmtl",
        "summary,,weighting,adaptive",
        "summary,,layer_scale,saliency",
        "summary,,target_sparsity,0.5",
        "summary,,overall_sparsity,0.5",
    ]
    assert "summary,,wall_seconds,3.2" in lines
    assert 'component,backbone,tasks,"seg,depth"' in lines
    assert "metric,depth.abs_err,better,lower" in lines
    assert "layer,enc.conv10,threshold," in lines


def test_compare_renderable_marks_the_best_with_a_star() -> None:
    text = _render(compare_renderable([RunView("a", _tiny()), RunView("b", _tiny(overall_sparsity=0.4))]))
    line = next(x for x in text.splitlines() if "achieved sparsity" in x)
    assert "50.00% ★" in line and "40.00% ★" not in line
    assert "★ best per row" in text


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


def _other_split(rep: RunReport, **dense: float) -> RunReport:
    tasks = {t: m.model_copy(update={"dense": {**m.dense, **dense}}) if t == "seg" else m for t, m in rep.tasks.items()}
    return rep.model_copy(update={"tasks": tasks})


def test_compare_marks_no_best_in_rows_without_a_direction() -> None:
    spread = _tiny().components
    other = _tiny(components=[spread[0].model_copy(update={"sparsity": 0.7}), spread[1]])
    text = _render(compare_renderable([RunView("a", _tiny()), RunView("b", other)]))
    line = next(x for x in text.splitlines() if "backbone sparsity" in x)
    assert "60.00%" in line and "70.00%" in line and "★" not in line  # where the sparsity went: no better side


def test_compare_warns_when_the_dense_baselines_differ() -> None:
    same = _render(compare_renderable([RunView("a", _tiny()), RunView("b", _tiny())]))
    assert "different dense baselines" not in same
    text = _render(compare_renderable([RunView("a", _tiny()), RunView("b", _other_split(_tiny(), miou=0.6))]))
    assert "warning: the runs have different dense baselines (dense metrics differ between a; b)" in text
    page = report_html([RunView("a", _tiny()), RunView("b", _other_split(_tiny(), miou=0.6))])
    assert '<p class="warn">warning: the runs have different dense baselines' in page


def test_titles_name_the_split_the_metrics_come_from() -> None:
    val = _render(report_renderable(_tiny()))
    assert "Task metrics on the validation split" in val
    test = _render(report_renderable(_tiny(), eval_split="test"))
    assert "Task metrics on the test split" in test and "validation" not in test
    page = report_html([RunView("a", _tiny(), baseline="baseline: B", eval_split="test")])  # as load_runs makes it
    assert "<h2>Task metrics on the test split (dense → pruned)</h2>" in page and "validation split" not in page
    both = _render(compare_renderable([RunView("a", _tiny(), eval_split="test"), RunView("b", _tiny())]))
    assert "Task metrics on each run's own split (test, validation; see the baselines)" in both
    tests = _render(
        compare_renderable([RunView("a", _tiny(), eval_split="test"), RunView("b", _tiny(), eval_split="test")])
    )
    assert "Task metrics on the test split" in tests

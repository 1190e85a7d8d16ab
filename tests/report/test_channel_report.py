"""``adapmtl report`` of a ``--structure channel`` run: the headline counts the target's unit (channels or FLOPs)
with the zero weights beside it, and every format has the channels, parameters and FLOPs before → after per
component with a total row and its reduction factors.

The run is a hand-built ``RunReport`` (no pruning needed); the expected strings are written out by hand, so a
missing section or a wrong number fails.
"""

from __future__ import annotations

import csv
import io
import json
import re
from html import unescape
from pathlib import Path

import pytest

from adapmtl_cli.config import RunReport
from adapmtl_cli.report.channels import channel_cells, headline, reduction, removed_fractions
from adapmtl_cli.report.html import embedded_json, report_html
from adapmtl_cli.report.terminal import plain_text, render_text, report_renderable
from adapmtl_cli.report.text import compare_markdown, report_csv, report_markdown
from adapmtl_cli.report.views import RunView, fmt, load_runs, rows

COMPONENTS = [
    {
        "name": "backbone",
        "kind": "backbone",
        "tasks": ["segmentation", "depth"],
        "params": 76000,
        "zeros": 57000,
        "sparsity": 0.75,
        "threshold": None,
    },
    {
        "name": "head:segmentation",
        "kind": "head",
        "tasks": ["segmentation"],
        "params": 114000,
        "zeros": 79800,
        "sparsity": 0.7,
        "threshold": None,
    },
]
CHANNELS = {
    "target": "channels",
    "achieved": 0.5,
    "components": {
        "backbone": {"channels": 240, "removed": 120, "params_before": 77352, "params_after": 20203},
        "head:segmentation": {"channels": 64, "removed": 32, "params_before": 115204, "params_after": 34768},
    },
    "params_before": 192556,
    "params_after": 54971,
    "flops_before": 12833024,
    "flops_after": 3744000,
    "keep": {"backbone.stem.0": [0, 2, 5], "heads.segmentation.0": [1, 3]},
}


def channel_report(**update: object) -> RunReport:
    """A finished ``--structure channel`` run: half the channels removed, 71.5 % of the weights zero."""
    rep = RunReport.model_validate(
        {
            "method": "adapmtl",
            "weighting": "adaptive",
            "layer_scale": "saliency",
            "target_sparsity": 0.5,
            "overall_sparsity": 0.715,
            "prunable_params": 190000,
            "zeros": 135850,
            "steps": 10,
            "wall_seconds": 3.2,
            "components": COMPONENTS,
            "layers": [
                {"name": "backbone.stem.0", "component": "backbone", "params": 76000, "zeros": 57000, "sparsity": 0.75},
                {
                    "name": "heads.segmentation.0",
                    "component": "head:segmentation",
                    "params": 114000,
                    "zeros": 79800,
                    "sparsity": 0.7,
                },
            ],
            "tasks": {
                "segmentation": {"dense": {"miou": 0.5}, "pruned": {"miou": 0.45}, "higher_is_better": {"miou": True}},
            },
            "delta_t": {"per_task": {"segmentation": -10.0}, "overall": -10.0, "convention": "conv"},
            "task_weights": {"segmentation": 1.0},
            "structure": "channel",
            "channels": CHANNELS,
        }
    )
    return rep.model_copy(update=update)


def flops_report() -> RunReport:
    """The same run, its target counting FLOPs (70.83 % of them removed)."""
    ch = channel_report().channels
    assert ch is not None
    return channel_report(channels=ch.model_copy(update={"target": "flops", "achieved": 0.7083}))


def weight_report() -> RunReport:
    """The same numbers as a weight run (no ``channels`` entry)."""
    return channel_report(structure="weight", channels=None)


HEADLINE = (
    "target 50.00% of channels → achieved 50.00% of channels (weights zero: 71.50%, 135,850 of 190,000 prunable "
    "weights)"
)
BACKBONE = ["backbone", "240", "120", "50.00%", "77,352 → 20,203", "3.83×", "-", "-"]
HEAD = ["head:segmentation", "64", "32", "50.00%", "115,204 → 34,768", "3.31×", "-", "-"]
TOTAL = ["total", "304", "152", "50.00%", "192,556 → 54,971", "3.50×", "12,833,024 → 3,744,000", "3.43×"]
CHANNEL_MARKDOWN = """\
**Channels per component (whole output channels removed)**

| component | channels | removed | kept | params before → after | params reduction | FLOPs before → after \
| FLOPs reduction |
|---|---:|---:|---:|---:|---:|---:|---:|
| backbone | 240 | 120 | 50.00% | 77,352 → 20,203 | 3.83× | - | - |
| head:segmentation | 64 | 32 | 50.00% | 115,204 → 34,768 | 3.31× | - | - |
| total | 304 | 152 | 50.00% | 192,556 → 54,971 | 3.50× | 12,833,024 → 3,744,000 | 3.43× |
"""


def _visible(page: str) -> str:
    page = re.sub(r'<script type="application/json".*?</script>', "", page, flags=re.S)
    return unescape(re.sub(r"<[^>]+>", " ", page))


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_headline_counts_channels_and_names_the_zero_weights() -> None:
    rep = channel_report()
    assert rep.channels is not None
    assert headline(rep, rep.channels) == HEADLINE
    flops = flops_report()
    assert flops.channels is not None
    assert headline(flops, flops.channels).startswith(
        "target 50.00% of FLOPs → achieved 70.83% of FLOPs (weights zero: 71.50%"
    )


def test_channel_cells_per_component_then_the_total() -> None:
    ch = channel_report().channels
    assert ch is not None
    assert channel_cells(ch) == [BACKBONE, HEAD, TOTAL]
    assert removed_fractions(ch) == {"backbone": 0.5, "head:segmentation": 0.5}
    assert reduction(12833024, 3744000) == "3.43×" and reduction(5, 0) == "-"


def test_markdown_of_a_channel_run() -> None:
    md = report_markdown(channel_report())
    first = md.splitlines()[0]
    run = "method `adapmtl`, weighting `adaptive`, layer scale saliency, 10 steps, 3 s"
    assert first == f"**Channels**: {HEADLINE}; {run}"
    assert "\n" + CHANNEL_MARKDOWN + "\n" in md
    assert "**Zero weights per component (left by the removed channels)**" in md
    assert md.index(CHANNEL_MARKDOWN) < md.index("| component | kind | tasks |")
    assert "| backbone | backbone | segmentation,depth | 76,000 | 75.00% | - |" in md
    assert "**Sparsity**" not in md and "achieved 71.50%" not in md
    assert "of FLOPs → achieved 70.83% of FLOPs" in report_markdown(flops_report())


def test_markdown_of_a_weight_run_has_no_channel_section() -> None:
    md = report_markdown(weight_report())
    assert md.startswith("**Sparsity**: target 50.00%, achieved 71.50% (135,850 of 190,000 prunable weights);")
    assert "channels" not in md.lower() and "FLOPs" not in md


def _table_lines(text: str) -> list[list[str]]:
    """The cells of every table line of a plain-text rich table (│-separated)."""
    return [[c.strip() for c in line.strip().strip("│┃").split("│")] for line in text.splitlines() if "│" in line]


def test_table_of_a_channel_run() -> None:
    text = plain_text(report_renderable(channel_report()))
    lines = text.splitlines()
    assert _words(lines[0]).startswith(_words(f"Channels {HEADLINE}; method adapmtl, weighting adaptive"))
    assert "Channels per component (whole output channels removed)" in text
    cells = _table_lines(text)
    for row in (BACKBONE, HEAD, TOTAL):
        assert row in cells, row
    assert "Zero weights per component (left by the removed channels)" in text
    assert "Sparsity per component" not in text
    assert "multiply-accumulates of one sample's forward" in text
    flops = plain_text(report_renderable(flops_report()))
    assert "achieved 70.83% of FLOPs (weights zero: 71.50%" in _words(flops)


def test_table_of_a_weight_run_is_unchanged() -> None:
    text = plain_text(report_renderable(weight_report()))
    assert text.splitlines()[0].startswith("Sparsity target 50.00% → achieved 71.50% of 190,000 prunable weights")
    assert "Channels per component" not in text and "FLOPs" not in text


def test_html_of_a_channel_run() -> None:
    page = report_html([RunView("r", channel_report())])
    visible = _words(_visible(page))
    assert _words(f"Channels {HEADLINE}") in visible
    assert "Channels per component (whole output channels removed)" in visible
    for row in (BACKBONE, HEAD, TOTAL):
        assert " ".join(row) in visible, row
    assert '<div class="k">target (channels)</div><div class="v" id="target-sparsity">50.00%</div>' in page
    assert '<div class="k">achieved (channels)</div><div class="v" id="channels-achieved">50.00%</div>' in page
    assert '<div class="k">weights zero</div><div class="v" id="overall-sparsity">71.50%</div>' in page
    assert 'id="params-reduction">3.50× smaller<' in page and 'id="flops-reduction">3.43× fewer<' in page
    assert "achieved sparsity" not in visible
    assert embedded_json(page)["channels"] == json.loads(channel_report().model_dump_json())["channels"]
    flops = report_html([RunView("r", flops_report())])
    assert '<div class="k">achieved (FLOPs)</div><div class="v" id="channels-achieved">70.83%</div>' in flops


def test_html_of_a_weight_run_has_no_channel_section() -> None:
    page = report_html([RunView("r", weight_report())])
    assert '<div class="k">achieved sparsity</div><div class="v" id="overall-sparsity">71.50%</div>' in page
    assert "channels-headline" not in page and "Channels per component" not in page


def test_csv_of_a_channel_run_carries_every_channel_number() -> None:
    table = list(csv.reader(io.StringIO(report_csv([RunView("r", channel_report())]))))
    got = {(s, n, f): v for s, n, f, v in table[1:]}
    assert got[("summary", "", "structure")] == "channel"
    assert got[("summary", "", "target_unit")] == "channels"
    assert got[("summary", "", "target_sparsity")] == "0.5"
    assert got[("summary", "", "overall_sparsity")] == "0.715"
    assert got[("channel", "", "achieved")] == "0.5"
    assert got[("channel", "", "groups")] == "2"
    assert got[("channel", "total", "params_before")] == "192556"
    assert got[("channel", "total", "params_after")] == "54971"
    assert got[("channel", "total", "flops_before")] == "12833024"
    assert got[("channel", "total", "flops_after")] == "3744000"
    assert float(got[("channel", "total", "flops_reduction")]) == pytest.approx(12833024 / 3744000)
    assert float(got[("channel", "total", "params_reduction")]) == pytest.approx(192556 / 54971)
    for name, c in CHANNELS["components"].items():  # type: ignore[attr-defined]
        for field in ("channels", "removed", "params_before", "params_after"):
            assert got[("channel", name, field)] == str(c[field])
        assert float(got[("channel", name, "kept")]) == 0.5
    sections = [s for s, *_ in table[1:]]
    assert sections.index("channel") > max(i for i, s in enumerate(sections) if s == "component")


def test_csv_of_weight_runs_has_no_channel_rows() -> None:
    text = report_csv([RunView("a", weight_report()), RunView("b", weight_report())])
    assert "channel" not in text and "structure" not in text and "target_unit" not in text


def test_compare_a_channel_run_with_a_weight_run() -> None:
    runs = [RunView("w", weight_report()), RunView("c", channel_report()), RunView("f", flops_report())]
    md = compare_markdown(runs).splitlines()
    assert "| structure | weight | channel | channel |" in md
    assert "| target unit | weights | channels | flops |" in md
    assert "| target sparsity (in the target unit) | 50.00% | 50.00% | 50.00% |" in md
    assert "| achieved sparsity (weights zero) | 71.50% | 71.50% | 71.50% |" in md
    assert "### Channels, parameters and FLOPs (channel runs; FLOPs of one sample's forward)" in md
    assert "| achieved (in the target unit) | - | 50.00% | 70.83% |" in md
    assert "| total FLOPs after | - | 3,744,000 | 3,744,000 |" in md
    assert "| total FLOPs reduction | - | 3.43× | 3.43× |" in md
    assert "| backbone channels removed | - | 120 | 120 |" in md
    assert "| head:segmentation channels kept | - | 50.00% | 50.00% |" in md
    assert not any("groups" in line for line in md)  # machine-only
    table = plain_text(render_text(runs, "table"))
    assert any("total params reduction" in x and "3.50×" in x for x in table.splitlines())
    html = _words(_visible(report_html(runs)))
    assert "total FLOPs reduction - 3.43× 3.43×" in html


def test_rows_of_weight_runs_are_those_before_channel_runs() -> None:
    got = [(r.section, r.field) for r in rows([RunView("a", weight_report())], layers=False)]
    assert ("summary", "structure") not in got and not any(s == "channel" for s, _ in got)
    assert fmt(3.4276, "factor") == "3.43×"


def test_report_command_of_a_channel_run_folder(tmp_path: Path) -> None:
    """``load_runs`` reads the channel report from a run folder and every format renders it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(channel_report().model_dump_json(indent=2))
    views = load_runs([run])
    assert views[0].report.channels is not None
    for fmt_name in ("table", "markdown", "html"):
        text = _words(_visible(render_text(views, fmt_name)))
        assert "12,833,024 → 3,744,000" in text and "3.43×" in text, fmt_name
        assert "achieved 50.00% of channels" in text, fmt_name
    assert json.loads(render_text(views, "json"))["channels"]["flops_after"] == 3744000


def test_plots_of_a_channel_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from adapmtl_cli.report.plots import run_plots

    records = [
        {"step": s, "sparsity": 0.1 * s, "target": 0.05 * s, "group_sparsity": {"backbone": 0.1 * s}} for s in (1, 2)
    ]
    names = [p.name for p in run_plots(RunView("r", channel_report(), metrics=records))]
    assert names[:3] == ["channels_components.png", "sparsity_components.png", "sparsity_layers.png"]
    assert "sparsity_steps.png" in names
    weight = [p.name for p in run_plots(RunView("r", weight_report()))]
    assert weight == ["sparsity_components.png", "sparsity_layers.png"]
    flops = run_plots(RunView("r", flops_report()))
    assert flops[0].caption == "Channels removed per component" and flops[0].png.startswith(b"\x89PNG")

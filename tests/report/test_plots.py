"""``adapmtl report --plot``: valid PNGs of the promised size, with colour, from the shared real run.

Without matplotlib, ``--plot`` is a one-line error naming the install command and the HTML page says the same.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from adapmtl_cli.report.plots import SIZE

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import CliRun, copy_run, invoke, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

RUN_PLOTS = (
    "sparsity_components.png",
    "sparsity_layers.png",
    "sparsity_steps.png",
    "thresholds_steps.png",
    "task_weights_steps.png",
    "task_losses_steps.png",
)
COMPARE_PLOTS = ("compare_sparsity_components.png", "compare_delta_t.png", "compare_sparsity_steps.png")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk (no image library needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def colour_count(path: Path) -> int:
    from PIL import Image  # a matplotlib dependency

    with Image.open(path) as im:
        im.load()
        return len(im.convert("RGB").getcolors(maxcolors=1 << 24) or [])


@pytest.fixture(scope="module")
def plotted(pruned_run: CliRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    pytest.importorskip("matplotlib")
    folder = tmp_path_factory.mktemp("plots") / "figs"
    return folder, invoke("report", pruned_run.path, "--plot", folder)


def test_plot_writes_every_figure(plotted: tuple[Path, object]) -> None:
    folder, result = plotted
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in folder.iterdir()) == sorted(RUN_PLOTS)
    assert f"wrote {len(RUN_PLOTS)} figures to {folder}" in result.stdout  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", RUN_PLOTS)
def test_each_figure_is_a_png_of_the_promised_size_with_colour(plotted: tuple[Path, object], name: str) -> None:
    path = plotted[0] / name
    assert png_size(path.read_bytes()) == SIZE
    assert colour_count(path) > 2


def test_compare_plots(pruned_run: CliRun, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    other = copy_run(pruned_run.path, tmp_path / "b")
    result = invoke("report", pruned_run.path, other, "--compare", "--plot", tmp_path / "cmp", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("section,name,field,")  # the figures line went to stderr
    for name in COMPARE_PLOTS:
        data = (tmp_path / "cmp" / name).read_bytes()
        assert png_size(data) == SIZE
        assert colour_count(tmp_path / "cmp" / name) > 2


def test_plot_into_a_file_is_refused(pruned_run: CliRun, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "taken"
    target.write_text("x")
    assert "is a file" in user_error(invoke("report", pruned_run.path, "--plot", target))


def test_plot_layer_granularity_aggregates_per_component() -> None:
    pytest.importorskip("matplotlib")
    from adapmtl_cli.config import RunReport
    from adapmtl_cli.report.plots import _component_series
    from adapmtl_cli.report.views import RunView

    rep = RunReport.model_validate(
        {
            "method": "adapmtl",
            "weighting": "equal",
            "target_sparsity": 0.5,
            "overall_sparsity": 0.5,
            "prunable_params": 40,
            "zeros": 20,
            "steps": 2,
            "wall_seconds": 1.0,
            "components": [
                {
                    "name": "backbone",
                    "kind": "backbone",
                    "tasks": ["a"],
                    "params": 40,
                    "zeros": 20,
                    "sparsity": 0.5,
                    "threshold": None,
                }
            ],
            "layers": [
                {"name": "x", "component": "backbone", "params": 10, "zeros": 0, "sparsity": 0.0},
                {"name": "y", "component": "backbone", "params": 30, "zeros": 0, "sparsity": 0.0},
            ],
            "tasks": {},
            "delta_t": {"per_task": {}, "overall": 0.0, "convention": "c"},
            "task_weights": {},
        }
    )
    records = [{"step": 1, "group_sparsity": {"x": 1.0, "y": 0.0}}, {"step": 2, "group_sparsity": {"x": 0.0, "y": 1.0}}]
    assert _component_series(RunView("r", rep, metrics=records)) == {"backbone": [0.25, 0.75]}


# --- without matplotlib -----------------------------------------------------------------------------


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError


def test_plot_without_matplotlib_says_how_to_install(no_matplotlib: None, pruned_run: CliRun, tmp_path: Path) -> None:
    message = user_error(invoke("report", pruned_run.path, "--plot", tmp_path / "figs"))
    assert message == '--plot needs plots, but matplotlib is not installed; pip install "adapmtl[plot]"'
    assert not (tmp_path / "figs").exists()


def test_html_without_matplotlib_still_renders_and_says_how(no_matplotlib: None, pruned_run: CliRun) -> None:
    result = invoke("report", pruned_run.path, "--format", "html")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        'warning: the HTML page has no plots: matplotlib is not installed; pip install "adapmtl[plot]"'
    ]
    assert 'plots need matplotlib: pip install "adapmtl[plot]"' in result.stdout.replace("&quot;", '"')
    assert "<img" not in result.stdout

"""Acceptance for the dataset layouts: `adapmtl data synth --layout X`, `data check`, then `adapmtl prune` through
the CLI on the generated files, for the MTAN and AdaShare NYU-v2 layouts and Tiny-Taskonomy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapmtl_cli.cli.app import app
from adapmtl_cli.config import RunReport

FACTORIES = """
from adapmtl_cli.models import deeplab_resnet_tiny


def nyu13():
    return deeplab_resnet_tiny(tasks={"segmentation": 13, "depth": 1, "normal": 3})


def nyu40():
    return deeplab_resnet_tiny(tasks={"segmentation": 40, "depth": 1, "normal": 3})


def taskonomy5():
    return deeplab_resnet_tiny(tasks={"segmentation": 17, "normal": 3, "depth": 1, "keypoints": 1, "edges": 1})
"""

CASES = {
    # layout for `data synth`, --data, factory, expected tasks, extra prune options
    "nyuv2": ("nyuv2", "nyu13", ["segmentation", "depth", "normal"], ["--augment"]),
    "nyuv2-adashare": ("nyuv2", "nyu40", ["segmentation", "depth", "normal"], ["--data-opt", "normals=adashare"]),
    "taskonomy": ("taskonomy", "taskonomy5", ["segmentation", "normal", "depth", "keypoints", "edges"], []),
}


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("layout", sorted(CASES))
def test_generate_check_and_prune(tmp_path: Path, layout: str) -> None:
    data, factory, tasks, extra = CASES[layout]
    root = tmp_path / "data"
    _invoke(["data", "synth", str(root), "--layout", layout, "--train", "8", "--val", "4", "--size", "32,32"])
    desc = json.loads(_invoke(["data", "check", str(root), "--data", data, "--json"]))
    assert desc["tasks"] == tasks
    assert {s: v["samples"] for s, v in desc["splits"].items()} == {"train": 8, "val": 4}

    (tmp_path / "factories.py").write_text(FACTORIES)
    build = getattr(_load(tmp_path / "factories.py"), factory)
    torch.manual_seed(0)
    checkpoint = tmp_path / "dense.pt"
    torch.save(build().state_dict(), checkpoint)
    run = tmp_path / "run"
    _invoke(
        ["prune", str(checkpoint), "--factory", f"{tmp_path / 'factories.py'}:{factory}", "--data", data]
        + ["--data-dir", str(root), "--sparsity", "0.8", "--steps", "6", "--batch-size", "4", "--out", str(run), "-q"]
        + extra
    )
    report = RunReport.model_validate_json((run / "report.json").read_text())
    assert abs(report.overall_sparsity - 0.8) <= 0.001
    assert list(report.tasks) == tasks
    assert set(report.scores) == {"delta_t_bounded", "delta_m", "delta_p"}
    config = json.loads((run / "config.json").read_text())
    if extra:  # the dataset options are part of the run's config, so resume and --config repeat them
        assert config["data_options"] in ({"augment": "true"}, {"normals": "adashare"})


def test_task_subset_on_taskonomy(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _invoke(["data", "synth", str(root), "--layout", "taskonomy", "--train", "8", "--val", "4", "--size", "32,32"])
    (tmp_path / "factories.py").write_text(FACTORIES)
    torch.manual_seed(0)
    torch.save(_load(tmp_path / "factories.py").taskonomy5().state_dict(), tmp_path / "dense.pt")
    run = tmp_path / "run"
    _invoke(
        ["prune", str(tmp_path / "dense.pt"), "--factory", f"{tmp_path / 'factories.py'}:taskonomy5"]
        + ["--data", "taskonomy", "--data-dir", str(root), "--tasks", "segment_semantic,depth_zbuffer"]
        + ["--sparsity", "0.7", "--steps", "4", "--batch-size", "4", "--out", str(run), "-q"]
    )
    report = RunReport.model_validate_json((run / "report.json").read_text())
    assert list(report.tasks) == ["segmentation", "depth"]
    assert "weighted_ce" in report.tasks["segmentation"].dense


def test_wrong_layout_option_is_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _invoke(["data", "synth", str(root), "--train", "2", "--val", "1", "--size", "16,16"])
    result = CliRunner().invoke(app, ["data", "check", str(root), "--data", "nyuv2", "--data-opt", "normals=adashare"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1


def _load(path: Path):  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"factories_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

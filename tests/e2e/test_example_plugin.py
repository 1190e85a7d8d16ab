"""``examples/plugin_multidigits``: the README's commands run as written and prune to the target sparsity."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapmtl_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "plugin_multidigits"
TRAIN = "python examples/plugin_multidigits/train_dense.py DIR"
PRUNE = (
    "adapmtl prune DIR/dense.pt --factory examples/plugin_multidigits/model.py:build --data "
    "examples/plugin_multidigits/plugin.py --data-dir DIR/data --sparsity 0.8 --steps 60 --out RUN"
)
REPORT = "adapmtl report RUN"


def test_readme_shows_the_commands_this_test_runs() -> None:
    readme = " ".join((EXAMPLE / "README.md").read_text(encoding="utf-8").replace("\\\n", " ").split())
    for command in (TRAIN, PRUNE, REPORT):
        assert command in readme


def test_readme_commands_prune_the_dense_model_to_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    work, run = tmp_path / "work", tmp_path / "run"
    train = TRAIN.replace("python", sys.executable, 1).replace("DIR", str(work)).split()
    done = subprocess.run(train, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (work / "dense.pt").is_file() and (work / "data" / "val" / "images.npy").is_file()

    runner = CliRunner()
    for command in (PRUNE, REPORT):
        args = command.replace("DIR", str(work)).replace("RUN", str(run)).split()[1:]
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output[-3000:]
    assert "left" in result.stdout and "macro_f1" in result.stdout

    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert report["overall_sparsity"] == pytest.approx(0.8, abs=0.001)
    for digit in ("left", "right"):
        # Chance is 0.1 for ten classes.
        assert report["tasks"][digit]["dense"]["accuracy"] > 0.5
    assert set(report["tasks"]["sum"]["pruned"]) == {"mae", "rmse"}


def test_data_check_summarises_the_example_data(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("multidigits_plugin_example", EXAMPLE / "plugin.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_data(tmp_path, train=20, val=10, seed=3)
    args = ["data", "check", str(tmp_path), "--data", str(EXAMPLE / "plugin.py"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tasks"] == ["left", "right", "sum"] and summary["layout"] == "multidigits"
    assert summary["splits"]["train"] == {"folder": "train", "samples": 20, "size": [1, 24, 24]}
    assert sum(summary["train_digit_counts"]) == 40

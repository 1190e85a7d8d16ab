"""``benchmarks/deploy.py``: cell keys and the table rendered from the cached cells (issue #14)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import deploy  # noqa: E402


def _cell(row: str, sparsity: float, seed: int, dt: float, b1: float) -> dict[str, object]:
    return {
        "row": row,
        "sparsity": sparsity,
        "seed": seed,
        "delta_t": dt,
        "score_bounded": dt,
        "file": "model.channels.onnx",
        "params_before": 100,
        "params_after": 40,
        "flops_before": 1000,
        "flops_after": 250,
        "speedup_b1": b1,
        "speedup_b8": b1 + 1,
        "speedup_b1_deploy": 2 * b1,
        "speedup_b8_deploy": 2 * b1 + 1,
    }


def test_keys_differ_by_row_sparsity_and_seed_and_are_stable() -> None:
    rows = list(deploy.ROWS)
    keys = {deploy._key(r, s, seed) for r in rows for s in deploy.SPARSITIES for seed in deploy.SEEDS}
    assert len(keys) == len(rows) * len(deploy.SPARSITIES) * len(deploy.SEEDS)
    assert deploy._key(rows[0], 0.5, 0) == deploy._key(rows[0], 0.5, 0)
    # another reference model gets its own keys; the first model's keys are what they were before the option
    assert deploy._key(rows[0], 0.5, 0, "deeplab_resnet_tiny") != deploy._key(rows[0], 0.5, 0)
    assert deploy._key(rows[0], 0.5, 0, deploy.DEFAULT_BENCH) == deploy._key(rows[0], 0.5, 0)


def test_the_table_shows_means_intervals_ratios_and_marks_a_partial_run() -> None:
    row = "tp_magnitude"
    text = deploy.render([_cell(row, 0.5, 0, -10.0, 2.0), _cell(row, 0.5, 1, -20.0, 3.0)])
    line = next(x for x in text.splitlines() if x.startswith(f"| {row} | 50%"))
    assert "-15.00 [" in line and "| 40.0% | 25.0% |" in line and "2.50 [" in line and "3.50 [" in line
    assert "| 5.00 [" in line and "| 6.00 [" in line  # the same cells at the deployment input size
    assert "speed-up b1 at 288×384" in text
    assert "| tp_magnitude | 30% | (not run)" in text
    total = len(deploy.ROWS) * len(deploy.SPARSITIES) * len(deploy.SEEDS)
    assert f"**Partial**: 2 of {total} cells" in text


def test_each_reference_model_gets_its_own_table() -> None:
    other = {**_cell("tp_taylor", 0.5, 0, -5.0, 1.5), "benchmark": "deeplab_resnet_tiny"}
    text = deploy.render([_cell("tp_magnitude", 0.5, 0, -10.0, 2.0), other])
    first, second = text.index("## `mobilenet_aspp_tiny`"), text.index("## `deeplab_resnet_tiny`")
    assert first < second
    assert "| tp_taylor | 50% | `model.channels.onnx` | -5.00 |" in text[second:]
    assert "| tp_taylor | 50% | (not run)" in text[first:second]


def test_committed_cells_are_taken_only_for_the_same_model_and_dense_checkpoint(tmp_path: Path) -> None:
    key = deploy._key
    runs = [
        {**_cell("tp_magnitude", 0.5, 0, -1.0, 2.0), "dense_fingerprint": "fp", "key": key("tp_magnitude", 0.5, 0)},
        {**_cell("tp_magnitude", 0.5, 1, -2.0, 2.0), "dense_fingerprint": "old", "key": key("tp_magnitude", 0.5, 1)},
        {
            **_cell("tp_magnitude", 0.5, 0, -3.0, 2.0),
            "dense_fingerprint": "fp",
            "benchmark": "deeplab_resnet_tiny",
            "key": key("tp_magnitude", 0.5, 0, "deeplab_resnet_tiny"),
        },
        {**_cell("tp_taylor", 0.5, 0, -4.0, 2.0), "dense_fingerprint": "fp", "key": "an-older-version"},
    ]
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps({"version": deploy.VERSION, "runs": runs}))
    found = deploy.committed_cells(path, deploy.DEFAULT_BENCH, "fp")
    assert (
        list(found) == [deploy._key("tp_magnitude", 0.5, 0)]
        and found[deploy._key("tp_magnitude", 0.5, 0)]["delta_t"] == -1.0
    )
    assert deploy.committed_cells(tmp_path / "missing.json", deploy.DEFAULT_BENCH, "fp") == {}


def test_a_failed_cell_is_reported_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object) -> dict[str, object]:
        raise RuntimeError("ONNX output 'depth' differs\nsecond line")

    monkeypatch.setattr(deploy, "_cell", failing)
    item = ("tp_magnitude", 0.5, 0, deploy.DEFAULT_BENCH, "s", "d", str(tmp_path), str(tmp_path))
    result = deploy._work(item)
    assert result == {
        "row": "tp_magnitude",
        "sparsity": 0.5,
        "seed": 0,
        "error": "RuntimeError: ONNX output 'depth' differs",
    }
    assert not list(tmp_path.iterdir())

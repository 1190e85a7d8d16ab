"""``benchmarks/deploy.py``: cell keys and the table rendered from the cached cells (issue #14)."""

from __future__ import annotations

import sys
from pathlib import Path

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
    }


def test_keys_differ_by_row_sparsity_and_seed_and_are_stable() -> None:
    rows = list(deploy.ROWS)
    keys = {deploy._key(r, s, seed) for r in rows for s in deploy.SPARSITIES for seed in deploy.SEEDS}
    assert len(keys) == len(rows) * len(deploy.SPARSITIES) * len(deploy.SEEDS)
    assert deploy._key(rows[0], 0.5, 0) == deploy._key(rows[0], 0.5, 0)


def test_the_table_shows_means_intervals_ratios_and_marks_a_partial_run() -> None:
    row = "tp_magnitude"
    text = deploy.render([_cell(row, 0.5, 0, -10.0, 2.0), _cell(row, 0.5, 1, -20.0, 3.0)])
    line = next(x for x in text.splitlines() if x.startswith(f"| {row} | 50%"))
    assert "-15.00 [" in line and "| 40.0% | 25.0% |" in line and "2.50 [" in line and "3.50 [" in line
    assert "| tp_magnitude | 30% | (not run)" in text
    assert "**Partial**: 2 of 18 cells" in text

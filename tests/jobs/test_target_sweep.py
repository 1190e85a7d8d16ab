"""Acceptance: any target in [0.5, 0.99], a short budget, and the run ends within 0.1 pp of it, for every method."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapmtl_cli.jobs.prune import run_prune

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import prune_config, read_report  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_adapmtl_hits_the_target(checkpoint: Path, scenes: Path, tmp_path: Path, target: float) -> None:
    run = tmp_path / "run"
    report = run_prune(prune_config(checkpoint, scenes, run, sparsity=target, steps=12, save_every=100))
    assert abs(report.overall_sparsity - target) <= 0.001
    assert read_report(run).overall_sparsity == report.overall_sparsity
    # one threshold per component, each from its own start (how the split moves: tests/sparsity/test_allocation.py)
    assert len({round(c.threshold or 0.0, 4) for c in report.components}) == len(report.components)


@pytest.mark.parametrize("method", ["str_global", "gmp", "disparse"])
def test_baselines_run_through_the_pipeline(checkpoint: Path, scenes: Path, tmp_path: Path, method: str) -> None:
    report = run_prune(prune_config(checkpoint, scenes, tmp_path / "run", method=method, steps=8, save_every=100))
    assert report.method == method
    assert report.weighting == "equal"
    assert abs(report.overall_sparsity - 0.9) <= 0.001


def test_component_bounds_hold_and_the_target_too(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    free = run_prune(prune_config(checkpoint, scenes, tmp_path / "free", sparsity=0.9, steps=12, save_every=100))
    normal_free = next(c.sparsity for c in free.components if c.name == "head:normal")
    cap = round(normal_free - 0.05, 3)  # binding: below where the learned split put it
    bounds = {"head:normal": (0.0, cap), "backbone": (0.85, 1.0)}
    report = run_prune(
        prune_config(
            checkpoint, scenes, tmp_path / "run", sparsity=0.9, steps=12, save_every=100, component_sparsity=bounds
        )
    )
    sparsity = {c.name: c.sparsity for c in report.components}
    assert abs(report.overall_sparsity - 0.9) <= 0.001
    assert sparsity["head:normal"] <= cap + 0.001
    assert sparsity["backbone"] >= 0.85 - 0.001

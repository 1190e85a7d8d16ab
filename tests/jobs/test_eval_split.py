"""``prune --eval-split test``: the dense and the pruned model are scored on the held-out split, not on val."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapmtl_cli.config import PruneConfig
from adapmtl_cli.data.synth.scenes import generate_scenes
from adapmtl_cli.errors import DataError
from adapmtl_cli.jobs.prepare import prepare
from adapmtl_cli.jobs.prune import run_prune
from adapmtl_cli.train.evaluate import evaluate

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, prune_config, read_report  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


@pytest.fixture(scope="module")
def three_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-split") / "scenes"
    generate_scenes(root, train=8, val=4, test=6, size=(32, 48), seed=0)
    return root


def _config(checkpoint: Path, data: Path, out: Path, **overrides: object) -> PruneConfig:
    # magnitude_oneshot: no calibration pass, so the two runs stay cheap; the split only changes evaluation.
    return prune_config(
        checkpoint, data, out, method="magnitude_oneshot", steps=2, save_every=2, log_every=1, **overrides
    )


def _metrics_on(checkpoint: Path, data: Path, split: str) -> dict[str, dict[str, float]]:
    """The metrics of the checkpoint's model on ``split``, computed apart from the prune job."""
    p = prepare(
        str(checkpoint), factory=FACTORY, trust_pickle=False, data="synthetic", data_dir=str(data), eval_split=split
    )
    assert p.eval_split == split and len(p.val) == {"val": 4, "test": 6}[split]
    return evaluate(p.loaded.model, p.val, p.tasks, p.mapping, torch.device("cpu"), 4)


def test_the_dense_and_the_pruned_model_are_scored_on_the_test_split(
    checkpoint: Path, three_splits: Path, tmp_path: Path
) -> None:
    on_val, on_test = _metrics_on(checkpoint, three_splits, "val"), _metrics_on(checkpoint, three_splits, "test")
    assert on_val != on_test  # different scenes, different numbers
    run = tmp_path / "run"
    report = run_prune(_config(checkpoint, three_splits, run, eval_split="test"))
    assert {t: m.dense for t, m in report.tasks.items()} == on_test
    assert read_report(run) == report
    assert json.loads((run / "dense_metrics.json").read_text()) == on_test
    assert json.loads((run / "config.json").read_text())["eval_split"] == "test"
    # The pruned weights, scored on test apart from the job, give the report's pruned numbers.
    pruned = tmp_path / "pruned.pt"
    torch.save(load_file(str(run / "pruned.safetensors")), pruned)
    assert {t: m.pruned for t, m in report.tasks.items()} == _metrics_on(pruned, three_splits, "test")


def test_val_stays_the_default(checkpoint: Path, three_splits: Path, tmp_path: Path) -> None:
    cfg = _config(checkpoint, three_splits, tmp_path / "run")
    assert cfg.eval_split == "val"


def test_no_test_split_fails_before_the_run_folder_exists(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(DataError) as info:
        run_prune(_config(checkpoint, scenes, out, eval_split="test"))
    assert "\n" not in str(info.value)
    assert f"split folder {str(scenes / 'test')!r} does not exist" in str(info.value)
    assert not out.exists()

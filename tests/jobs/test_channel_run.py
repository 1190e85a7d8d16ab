"""``prune --structure channel`` through the CLI, then ``export --onnx`` and ``load_pruned``: the physically
smaller model loads from the user's own factory and computes what the pruned run computed (issue #14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import adapmtl_cli
from adapmtl_cli.config import ChannelPlan, ExportManifest, RunReport
from adapmtl_cli.errors import CheckpointError, ConfigError
from adapmtl_cli.jobs.export import load_pruned_model
from adapmtl_cli.models import deeplab_resnet_tiny, mobilenet_v2_tiny

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, TASKS, CliRun, invoke, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, scenes: Path) -> CliRun:
    out = tmp_path_factory.mktemp("channel") / "run"
    args = ("--sparsity", "0.5", "--steps", "12", "--batch-size", "4", "--structure", "channel", "--quiet")
    result = invoke(
        "prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--device", "cpu", "--out", out, *args
    )
    assert result.exit_code == 0, result.output
    exported = invoke("export", out, "--onnx", "--latency-batch", "2")
    assert exported.exit_code == 0, exported.output
    return CliRun(out, exported, 0.0)


def test_the_report_counts_channels_and_lands_on_the_target(channel_run: CliRun) -> None:
    report = RunReport.model_validate_json((channel_run.path / "report.json").read_text())
    assert report.structure == "channel" and report.channels is not None
    ch = report.channels
    total = sum(c.channels for c in ch.components.values())
    assert sum(c.removed for c in ch.components.values()) == round(0.5 * total)
    assert ch.achieved == round(0.5 * total) / total and ch.target == "channels"
    assert ch.params_after < ch.params_before and ch.flops_after < ch.flops_before
    assert set(report.components[i].name for i in range(len(report.components))) == set(ch.components)


def test_export_writes_the_smaller_model_and_load_pruned_rebuilds_it(channel_run: CliRun) -> None:
    folder = channel_run.path / "export"
    manifest = ExportManifest.model_validate_json((folder / "manifest.json").read_text())
    assert manifest.channels is not None
    ch = manifest.channels
    assert ch.params_after < ch.params_before and ch.max_abs_diff <= 1e-4
    assert ch.onnx is not None and Path(ch.onnx).name == "model.channels.onnx"
    assert manifest.latency is not None and "model.channels.onnx" in manifest.latency.files
    assert "smaller" in channel_run.result.output and "model.channels.onnx" in channel_run.result.output
    plan = ChannelPlan.model_validate_json((folder / "channel_plan.json").read_text())
    report = RunReport.model_validate_json((channel_run.path / "report.json").read_text())
    assert report.channels is not None and plan.keep == report.channels.keep

    smaller = adapmtl_cli.load_pruned(deeplab_resnet_tiny(), folder)  # the user's factory, fresh weights
    assert sum(p.numel() for p in smaller.parameters()) == ch.params_after
    pruned, _, _ = load_pruned_model(channel_run.path)  # full size, removed channels zero
    x = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = pruned(x), smaller(x)
    for t in TASKS:
        torch.testing.assert_close(b[t], a[t], rtol=0, atol=1e-5)

    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.channels.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for t, value in zip(TASKS, got, strict=True):
        np.testing.assert_allclose(value, a[t].numpy(), atol=1e-4)


def test_load_pruned_refuses_other_folders_and_other_models(channel_run: CliRun, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no channel_plan.json"):
        adapmtl_cli.load_pruned(deeplab_resnet_tiny(), tmp_path)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        adapmtl_cli.load_pruned(mobilenet_v2_tiny(), channel_run.path / "export")


def test_channel_options_that_do_not_combine_fail_before_any_run_folder(
    checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    common = ("--factory", FACTORY, "--data-dir", scenes, "--out", out, "--steps", "2")
    result = invoke("prune", checkpoint, *common, "--structure", "channel", "--method", "gmp")
    assert (
        "--method gmp prunes weights; --structure channel works with --method adapmtl, tp_magnitude, tp_taylor"
        in user_error(result)
    )
    result = invoke("prune", checkpoint, *common, "--target", "flops")
    assert "--target chooses what a channel run counts; it needs --structure channel" in user_error(result)
    assert not out.exists()

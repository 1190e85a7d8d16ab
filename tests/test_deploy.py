"""``export_run`` on the shared pruned run: each deployment file reproduces the pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adapmtl_cli.config import ExportManifest
from adapmtl_cli.deploy import export_run, load_pruned_model
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.models import deeplab_resnet_tiny
from adapmtl_cli.sparse_codec import load_sparse

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import TASKS, CliRun, copy_run  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 48, generator=torch.Generator().manual_seed(3))


def _fresh(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = deeplab_resnet_tiny()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def test_export_succeeded(exported_run: CliRun) -> None:
    assert exported_run.result.exit_code == 0, exported_run.result.output


def test_dense_file_loads_strictly_and_matches_the_baked_model(exported_run: CliRun, pruned_run: CliRun) -> None:
    dense = load_file(str(exported_run.path / "model.safetensors"))
    baked = load_file(str(pruned_run.path / "pruned.safetensors"))
    assert dense.keys() == baked.keys()
    assert all(torch.equal(dense[k], baked[k]) for k in baked)
    x = _images()
    with torch.no_grad():
        got, want = _fresh(dense)(x), _fresh(baked)(x)
    assert sorted(got) == sorted(TASKS)
    for task in TASKS:
        assert torch.equal(got[task], want[task]), task


def test_sparse_file_decodes_to_the_dense_file_bit_for_bit(exported_run: CliRun) -> None:
    dense = load_file(str(exported_run.path / "model.safetensors"))
    sparse = load_sparse(exported_run.path / "model.sparse.safetensors")
    assert sparse.keys() == dense.keys()
    for k, t in dense.items():
        assert (sparse[k].dtype, sparse[k].shape) == (t.dtype, t.shape), k
        assert torch.equal(_bits(sparse[k]), _bits(t)), k


def test_sparse_file_is_smaller(exported_run: CliRun) -> None:
    dense = (exported_run.path / "model.safetensors").stat().st_size
    sparse = (exported_run.path / "model.sparse.safetensors").stat().st_size
    assert sparse < 0.35 * dense  # 90% zeros; README quotes ~13% for big models, small ones pay more header


def test_onnx_runs_with_task_outputs_and_matches_pytorch(exported_run: CliRun, pruned_run: CliRun) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported_run.path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(TASKS)
    model = _fresh(load_file(str(pruned_run.path / "pruned.safetensors")))
    for batch in (1, 4):  # dynamic batch: 4 was not among the export-time checks
        x = _images(batch)
        outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = model(x)
        for task, got in zip(TASKS, outputs, strict=True):
            assert got.shape == tuple(want[task].shape)
            np.testing.assert_allclose(got, want[task].numpy(), atol=1e-4, rtol=0)


def test_manifest_records_what_was_verified(exported_run: CliRun) -> None:
    manifest = ExportManifest.model_validate_json((exported_run.path / "manifest.json").read_text())
    assert manifest.sparse_roundtrip == "bit-exact"
    assert manifest.onnx is not None and manifest.onnx_max_abs_diff is not None
    assert manifest.onnx_max_abs_diff <= 1e-4
    assert manifest.onnx_batch_sizes == [1, 3]
    assert manifest.dense_bytes == (exported_run.path / "model.safetensors").stat().st_size
    assert manifest.sparse_bytes == (exported_run.path / "model.sparse.safetensors").stat().st_size


def test_load_pruned_model_holds_the_baked_weights(pruned_run: CliRun) -> None:
    model, cfg, manifest = load_pruned_model(pruned_run.path)
    baked = load_file(str(pruned_run.path / "pruned.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], baked[k]) for k in baked)
    assert not model.training
    assert cfg.sparsity == 0.9 and manifest.tasks == list(TASKS)


def test_export_run_without_weights_raises(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")
    (run / "pruned.safetensors").unlink()
    with pytest.raises(ConfigError, match="no pruned weights"):
        export_run(run)


def test_export_run_of_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        export_run(tmp_path / "nothing")


def test_export_run_rejects_an_unknown_exporter_before_writing(pruned_run: CliRun, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'foo'"):
        export_run(pruned_run.path, out_dir=tmp_path / "out", onnx=True, exporter="foo")
    assert not (tmp_path / "out").exists()


def test_export_run_returns_the_manifest_it_saves(pruned_run: CliRun, tmp_path: Path) -> None:
    manifest = export_run(pruned_run.path, out_dir=tmp_path / "out")
    assert manifest.onnx is None
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved == json.loads(manifest.model_dump_json())

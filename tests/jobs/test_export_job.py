"""``export_run`` on the shared pruned run: each deployment file reproduces the pruned model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

import adapmtl_cli
from adapmtl_cli.config import ExportManifest
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.export.sparse_codec import load_sparse, save_sparse
from adapmtl_cli.export.sparse_tensor import cast_state
from adapmtl_cli.jobs.export import PARITY_BATCH_SIZES, export_run, load_pruned_model
from adapmtl_cli.models import deeplab_resnet_tiny

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import TASKS, CliRun, copy_run, invoke, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 48, generator=torch.Generator().manual_seed(3))


def _fresh(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = deeplab_resnet_tiny()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


@pytest.mark.onnx
def test_export_succeeded(exported_run: CliRun) -> None:
    assert exported_run.result.exit_code == 0, exported_run.result.output


@pytest.mark.onnx
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


@pytest.mark.onnx
def test_sparse_file_decodes_to_the_dense_file_bit_for_bit(exported_run: CliRun) -> None:
    dense = load_file(str(exported_run.path / "model.safetensors"))
    sparse = load_sparse(exported_run.path / "model.sparse.safetensors")
    assert sparse.keys() == dense.keys()
    for k, t in dense.items():
        assert (sparse[k].dtype, sparse[k].shape) == (t.dtype, t.shape), k
        assert torch.equal(_bits(sparse[k]), _bits(t)), k


@pytest.mark.onnx
def test_sparse_file_is_smaller(exported_run: CliRun) -> None:
    dense = (exported_run.path / "model.safetensors").stat().st_size
    sparse = (exported_run.path / "model.sparse.safetensors").stat().st_size
    assert sparse < 0.35 * dense  # 90% zeros; README quotes ~13% for big models, small ones pay more header


@pytest.mark.onnx
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


@pytest.mark.onnx
def test_manifest_records_what_was_verified(exported_run: CliRun) -> None:
    manifest = ExportManifest.model_validate_json((exported_run.path / "manifest.json").read_text())
    assert manifest.sparse_roundtrip == "bit-exact" and manifest.sparse_values_dtype is None
    assert manifest.onnx is not None and manifest.onnx_max_abs_diff is not None
    assert manifest.onnx_max_abs_diff <= 1e-4
    assert manifest.onnx_batch_sizes == list(PARITY_BATCH_SIZES) == [1, 3, 5]
    assert manifest.dense_bytes == (exported_run.path / "model.safetensors").stat().st_size
    assert manifest.sparse_bytes == (exported_run.path / "model.sparse.safetensors").stat().st_size
    assert manifest.onnx_exporter == "dynamo" and manifest.onnx_external_data is None
    assert manifest.onnx_opset == onnx.load(manifest.onnx).opset_import[0].version
    assert list(manifest.onnx_parity) == list(TASKS)
    assert max(manifest.onnx_parity.values()) == manifest.onnx_max_abs_diff
    assert manifest.onnx_sparse_initializers == 0 and manifest.shrink is None


@pytest.mark.onnx
def test_cli_prints_parity_per_output(exported_run: CliRun) -> None:
    lines = exported_run.result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "onnxruntime parity max abs diff" in line)
    per_output = {line.split()[0]: float(line.split()[1]) for line in lines[start + 1 : start + 1 + len(TASKS)]}
    assert list(per_output) == list(TASKS) and max(per_output.values()) <= 1e-4
    assert "opset" in exported_run.result.stdout and "all-zero filters" in exported_run.result.stdout


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


# --- options: narrow values, sparse initializers, shrink ------------------------------------------


@pytest.mark.onnx
def test_export_with_every_option_verifies_each_file(pruned_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = export_run(
        pruned_run.path,
        out_dir=out,
        onnx=True,
        exporter="legacy",
        values_dtype="fp16",
        sparse_initializers=True,
        shrink=True,
    )
    baked = load_file(str(pruned_run.path / "pruned.safetensors"))
    # sparse file: fp16 values, decoded in the model's dtypes, bit-exact against the rounded weights
    assert manifest.sparse_values_dtype == "float16"
    decoded, rounded = load_sparse(out / "model.sparse.safetensors"), cast_state(baked, torch.float16)
    assert all(torch.equal(_bits(decoded[k]), _bits(rounded[k])) for k in baked)
    assert manifest.sparse_bytes < 0.8 * (pruned_run.path / "export" / "model.sparse.safetensors").stat().st_size
    # ONNX with sparse initializers
    assert manifest.onnx_sparse_initializers > 0
    assert len(onnx.load(str(out / "model.onnx")).graph.sparse_initializer) == manifest.onnx_sparse_initializers
    # zero filters are reported for every layer that has them
    model = _fresh(baked)
    for layer, count in manifest.zero_filters.items():
        weight = model.get_submodule(layer).weight
        assert int((weight.reshape(weight.shape[0], -1) == 0).all(dim=1).sum()) == count
    # shrink: the shrunk ONNX, if the run left removable channels, reproduces the pruned model
    shrink = manifest.shrink
    assert shrink is not None and shrink.status in ("shrunk", "nothing removed"), shrink
    if shrink.status == "shrunk":
        assert shrink.params_after < shrink.params_before and shrink.flops_after <= shrink.flops_before
        assert shrink.max_abs_diff <= 1e-4 and shrink.onnx_max_abs_diff is not None
        assert shrink.onnx_max_abs_diff <= 1e-4 and list(shrink.onnx_parity) == list(TASKS)
        _assert_onnx_matches(out / "model.shrunk.onnx", model, batch=4)
    else:
        assert not (out / "model.shrunk.onnx").exists()


def _assert_onnx_matches(path: Path, model: torch.nn.Module, batch: int) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(batch)
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    for task, got in zip(TASKS, outputs, strict=True):
        np.testing.assert_allclose(got, want[task].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--values-dtype", "fp8"), "--values-dtype 'fp8' is not one of fp16, bf16"),
        (("--sparse-initializers",), "--sparse-initializers applies to ONNX files; add --onnx or --shrink"),
        (
            ("--exporter", "jit", "--values-dtype", "int8"),
            "--exporter 'jit' is not one of dynamo, legacy; --values-dtype 'int8' is not one of fp16, bf16",
        ),
    ],
)
def test_bad_options_are_refused_before_writing(
    pruned_run: CliRun, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    assert user_error(invoke("export", pruned_run.path, "--out", tmp_path / "out", *args)) == message
    assert not (tmp_path / "out").exists()


# --- densify --------------------------------------------------------------------------------------


@pytest.mark.onnx
def test_densify_reproduces_the_dense_export_bit_for_bit(exported_run: CliRun, tmp_path: Path) -> None:
    result = invoke("export", "--densify", exported_run.path / "model.sparse.safetensors", tmp_path / "d.safetensors")
    assert result.exit_code == 0, result.output
    dense = load_file(str(exported_run.path / "model.safetensors"))
    densified = load_file(str(tmp_path / "d.safetensors"))
    assert list(densified) == list(dense)
    assert all(torch.equal(_bits(densified[k]), _bits(dense[k])) for k in dense)
    _fresh(densified)  # strict load into the user's class


def test_densify_canonicalises_negative_zero(tmp_path: Path) -> None:
    weight = torch.tensor([[-0.0, 1.5, 0.0, -2.0]] * 32)
    save_sparse({"w": weight, "b": torch.tensor([-0.0, 3.0])}, tmp_path / "z.sparse.safetensors")
    result = invoke("export", "--densify", tmp_path / "z.sparse.safetensors", tmp_path / "z.safetensors")
    assert result.exit_code == 0, result.output
    dense = load_file(str(tmp_path / "z.safetensors"))
    want = weight.clone()
    want[want == 0] = 0.0  # +0.0 everywhere a zero was
    assert torch.equal(_bits(dense["w"]), _bits(want)) and not torch.signbit(dense["w"][:, 0]).any()
    assert torch.equal(_bits(dense["b"]), _bits(torch.tensor([0.0, 3.0])))


def test_densify_rejects_a_malformed_file_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    message = user_error(invoke("export", "--densify", tmp_path / "bad.safetensors", tmp_path / "out.safetensors"))
    assert message.startswith("cannot read sparse file") and not (tmp_path / "out.safetensors").exists()


@pytest.mark.onnx
def test_load_sparse_is_exported_from_the_package(exported_run: CliRun) -> None:
    state = adapmtl_cli.load_sparse(exported_run.path / "model.sparse.safetensors")
    assert "load_sparse" in adapmtl_cli.__all__
    _fresh(state)


def test_importing_the_package_stays_light() -> None:
    code = "import sys, adapmtl_cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

"""ONNX export with both exporters, onnxruntime parity, sparse initializers and external data."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
import torch
from export_samples import TASKS, images, pruned_model
from tiny_models import HardShared
from torch import Tensor, nn

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export import onnx_storage
from adapmtl_cli.export.onnx import OnnxExport, OnnxParity, check_onnx_parity, export_onnx


class _TupleOutputs(nn.Module):
    """What the CLI does for users' models: turn the ``{task: map}`` dict into a tuple in a fixed order."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(x)
        return tuple(outputs[name] for name in self.names)


@pytest.fixture(scope="module", params=["dynamo", "legacy"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    wrapper = _TupleOutputs(pruned_model(), TASKS)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_onnx(wrapper, images(1), path, TASKS, exporter=request.param)
    return wrapper, path


@pytest.mark.onnx
def test_onnx_matches_pytorch_at_batch_1_and_3(exported: tuple[nn.Module, Path]) -> None:
    wrapper, path = exported
    parity = check_onnx_parity(wrapper, path, [images(1, seed=5), images(3, seed=6)], TASKS)
    assert isinstance(parity, OnnxParity)
    assert parity.batch_sizes == (1, 3)
    assert set(parity.per_output) == set(TASKS)
    assert parity.max_abs_diff == max(parity.per_output.values()) < 1e-4
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]


@pytest.mark.onnx
def test_parity_detects_weights_changed_after_export(exported: tuple[nn.Module, Path]) -> None:
    wrapper, path = exported
    changed = _TupleOutputs(pruned_model(), TASKS)
    changed.load_state_dict(wrapper.state_dict())
    with torch.no_grad():
        changed.model.heads["depth"][2].bias.add_(0.01)
    with pytest.raises(ExportError, match=r"ONNX output 'depth' differs from PyTorch by 0\.01"):
        check_onnx_parity(changed, path, [images(2)], TASKS)
    loose = check_onnx_parity(changed, path, [images(2)], TASKS, atol=0.1)
    assert loose.max_abs_diff == pytest.approx(0.01, abs=1e-5) and loose.per_output["segmentation"] < 1e-4


@pytest.mark.onnx
def test_export_restores_training_mode_and_checks_output_count(tmp_path: Path) -> None:
    wrapper = _TupleOutputs(pruned_model(), TASKS).train()
    with pytest.raises(ExportError, match=r"model returns 3 outputs but 2 names were given"):
        export_onnx(wrapper, images(1), tmp_path / "m.onnx", TASKS[:2], exporter="legacy")
    assert wrapper.training
    export_onnx(wrapper, images(1), tmp_path / "m.onnx", TASKS, exporter="legacy")
    assert wrapper.training and (tmp_path / "m.onnx").is_file()


@pytest.mark.onnx
def test_fixed_batch_and_opset_are_honoured(tmp_path: Path) -> None:
    wrapper = _TupleOutputs(pruned_model(), TASKS)
    path = tmp_path / "fixed.onnx"
    export_onnx(wrapper, images(1), path, TASKS, opset=17, dynamic_batch=False, exporter="legacy")
    assert onnx.load(str(path)).opset_import[0].version == 17
    check_onnx_parity(wrapper, path, [images(1)], TASKS)
    with pytest.raises(ExportError, match=r"onnxruntime fails on an input of shape \[3, 3, 32, 48\]"):
        check_onnx_parity(wrapper, path, [images(3)], TASKS)


@pytest.mark.onnx
def test_export_reports_what_it_wrote(exported: tuple[nn.Module, Path]) -> None:
    wrapper, path = exported
    written = export_onnx(wrapper, images(1), path.with_name("again.onnx"), TASKS, exporter="legacy")
    assert isinstance(written, OnnxExport)
    assert written.opset == onnx.load(str(written.path)).opset_import[0].version >= 17
    assert written.bytes == written.path.stat().st_size
    assert written.external_data is None and written.sparse_initializers == 0
    written.path.unlink()


@pytest.mark.onnx
def test_sparse_initializers_are_smaller_and_match(tmp_path: Path) -> None:
    wrapper = _TupleOutputs(pruned_model(), TASKS)
    dense = export_onnx(wrapper, images(1), tmp_path / "dense.onnx", TASKS, exporter="legacy")
    sparse = export_onnx(
        wrapper, images(1), tmp_path / "sparse.onnx", TASKS, exporter="legacy", sparse_initializers=True
    )
    assert sparse.sparse_initializers > 0 and sparse.bytes < dense.bytes
    graph = onnx.load(str(sparse.path)).graph
    assert len(graph.sparse_initializer) == sparse.sparse_initializers
    for tensor in graph.sparse_initializer:
        assert tensor.indices.data_type == onnx.TensorProto.INT64  # the ONNX spec's only index type
        assert list(tensor.indices.dims) == list(tensor.values.dims)  # flat positions, one per value
    parity = check_onnx_parity(wrapper, sparse.path, [images(1, seed=5), images(3, seed=6)], TASKS)
    assert parity.max_abs_diff < 1e-4


@pytest.mark.onnx
def test_external_data_is_written_beside_the_graph_and_cleaned_up(tmp_path: Path) -> None:
    wrapper = _TupleOutputs(pruned_model(), TASKS)
    path = tmp_path / "model.onnx"
    written = export_onnx(wrapper, images(1), path, TASKS, exporter="legacy", external_data=True)
    assert written.external_data == tmp_path / "model.onnx.data"
    assert written.bytes == path.stat().st_size + written.external_data.stat().st_size
    assert path.stat().st_size < 20_000 < written.external_data.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    onnx.checker.check_model(str(path), full_check=True)
    check_onnx_parity(wrapper, path, [images(2, seed=7)], TASKS)
    export_onnx(wrapper, images(1), path, TASKS, exporter="legacy", external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the stale data file is gone


@pytest.mark.onnx
def test_external_data_is_chosen_automatically_above_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_storage, "EXTERNAL_DATA_THRESHOLD", 10_000)  # stands in for 2 GiB
    wrapper = _TupleOutputs(pruned_model(), TASKS)
    written = export_onnx(wrapper, images(1), tmp_path / "big.onnx", TASKS)
    assert written.external_data == tmp_path / "big.onnx.data" and written.exporter == "dynamo"
    check_onnx_parity(wrapper, written.path, [images(3, seed=8)], TASKS)


def test_unknown_exporter_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"unknown ONNX exporter 'torchscript'"):
        export_onnx(HardShared(), images(1), tmp_path / "m.onnx", TASKS, exporter="torchscript")


def test_dynamo_failure_suggests_the_legacy_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Could not guard on data-dependent expression\nlong trace follows")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    wrapper = _TupleOutputs(pruned_model(), TASKS)
    with pytest.raises(ExportError, match=r"dynamo ONNX export failed \(RuntimeError: Could not guard.*legacy$"):
        export_onnx(wrapper, images(1), tmp_path / "m.onnx", TASKS)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_is_an_export_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"^onnxruntime is not installed; pip install onnxruntime$"):
        check_onnx_parity(HardShared(), tmp_path / "m.onnx", [images(1)], TASKS)


def test_parity_allowance_scales_with_the_output_magnitude() -> None:
    parity = OnnxParity(
        max_abs_diff=2e-3,
        per_output={"small": 5e-5, "big": 2e-3, "wide": 9e-4},
        batch_sizes=(1,),
        scale={"small": 0.5, "big": 10.0, "wide": 20.0},
    )
    assert parity.allowed("small", 1e-4) == 1e-4 and parity.allowed("big", 1e-4) == pytest.approx(1e-3)
    assert parity.failing(1e-4) == ["big"] and not parity.passes(1e-4)
    assert parity.passes(2e-4)
    unscaled = OnnxParity(max_abs_diff=2e-4, per_output={"a": 2e-4}, batch_sizes=(1,))
    assert unscaled.allowed("a", 1e-4) == 1e-4 and unscaled.failing(1e-4) == ["a"]


class _Amplified(nn.Module):
    """Outputs of magnitude ~1000, where float32 rounding alone differs by more than an absolute 1e-4."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(1000.0 * y for y in self.inner(x))


@pytest.mark.onnx
def test_parity_is_relative_for_large_outputs(exported: tuple[nn.Module, Path], tmp_path: Path) -> None:
    wrapper, _ = exported
    amplified = _Amplified(wrapper)
    path = tmp_path / "amplified.onnx"
    export_onnx(amplified, images(1), path, TASKS, exporter="legacy")
    nudged = _Amplified(_TupleOutputs(pruned_model(), TASKS))
    nudged.load_state_dict(amplified.state_dict())
    with torch.no_grad():
        nudged.inner.model.heads["depth"][2].bias.add_(2e-6)  # 2e-3 at the output, far under 1e-4 x ~1000
    parity = check_onnx_parity(nudged, path, [images(2)], TASKS)
    assert parity.per_output["depth"] > 1e-3 and parity.scale["depth"] > 100
    with torch.no_grad():
        nudged.inner.model.heads["depth"][2].bias.add_(1e-2)  # 10 at the output: beyond any rounding
    with pytest.raises(
        ExportError, match=r"ONNX output 'depth' differs from PyTorch by .*allowed .*largest \|output\|"
    ):
        check_onnx_parity(nudged, path, [images(2)], TASKS)

"""ONNX weight storage: which initializers become sparse, how they are encoded, and the 2 GiB guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export import onnx_storage
from adapmtl_cli.export.onnx_storage import save_model, to_sparse_initializers_, weight_bytes


def _add_model(weights: dict[str, np.ndarray], as_input: tuple[str, ...] = ()) -> onnx.ModelProto:
    """``y = x + w0 + w1 + ...`` over 1-D tensors, each ``w`` an initializer with a value_info entry."""
    dtype = helper.np_dtype_to_tensor_dtype(next(iter(weights.values())).dtype)
    size = next(iter(weights.values())).size
    nodes, previous = [], "x"
    for i, name in enumerate(weights):
        out = "y" if i == len(weights) - 1 else f"s{i}"
        nodes.append(helper.make_node("Add", [previous, name], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, [size])]
        + [helper.make_tensor_value_info(name, dtype, [size]) for name in as_input],
        [helper.make_tensor_value_info("y", dtype, [size])],
        initializer=[numpy_helper.from_array(array, name) for name, array in weights.items()],
        value_info=[helper.make_tensor_value_info(name, dtype, [size]) for name in weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _sparse_array(size: int, density: float, dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(size) * (rng.random(size) < density)).astype(dtype)


@pytest.mark.onnx
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_mostly_zero_initializers_become_sparse_and_run(tmp_path: Path, dtype: type) -> None:
    weights = {"sparse": _sparse_array(1000, 0.1, dtype), "dense": _sparse_array(1000, 0.9, dtype, seed=1)}
    model = _add_model(weights)
    assert to_sparse_initializers_(model) == 1
    assert [t.name for t in model.graph.initializer] == ["dense"]
    (sparse,) = model.graph.sparse_initializer
    assert sparse.values.name == "sparse" and list(sparse.dims) == [1000]
    assert sparse.indices.data_type == TensorProto.INT64
    np.testing.assert_array_equal(numpy_helper.to_array(sparse.indices), np.flatnonzero(weights["sparse"]))
    assert [v.name for v in model.graph.value_info] == ["dense"]
    save_model(model, tmp_path / "m.onnx", external=False)
    save_model(_add_model(weights), tmp_path / "dense.onnx", external=False)
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    x = np.ones(1000, dtype=dtype)
    outputs = []
    for name in ("m.onnx", "dense.onnx"):
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"x": x})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])  # onnxruntime densifies: same bits as dense weights


def test_bfloat16_keeps_its_element_type() -> None:
    array = _sparse_array(512, 0.05)
    tensor = helper.make_tensor("w", TensorProto.BFLOAT16, [512], array.tolist())
    model = _add_model({"v": array})
    model.graph.initializer.append(tensor)
    assert to_sparse_initializers_(model) == 2
    by_name = {t.values.name: t for t in model.graph.sparse_initializer}
    assert by_name["w"].values.data_type == TensorProto.BFLOAT16
    assert by_name["w"].values.dims == [int(np.count_nonzero(array))]


def test_graph_inputs_scalars_and_integers_stay_dense() -> None:
    model = _add_model({"w": _sparse_array(1000, 0.01)}, as_input=("w",))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "scalar"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1000, np.int64), "ints"))
    assert to_sparse_initializers_(model) == 0
    assert len(model.graph.initializer) == 3


def test_weight_bytes_counts_dense_and_sparse() -> None:
    model = _add_model({"a": _sparse_array(1000, 0.1), "b": _sparse_array(100, 1.0)})
    assert weight_bytes(model) == 1100 * 4
    to_sparse_initializers_(model)
    nnz = model.graph.sparse_initializer[0].values.dims[0]
    assert weight_bytes(model) == 100 * 4 + nnz * (4 + 8)


def test_single_file_past_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_storage, "EXTERNAL_DATA_THRESHOLD", 1000)
    model = _add_model({"w": _sparse_array(1000, 0.9)})
    with pytest.raises(ExportError, match="would pass protobuf's 2 GiB limit"):
        save_model(model, tmp_path / "m.onnx", external=False)
    to_sparse_initializers_(sparse_model := _add_model({"w": _sparse_array(1000, 0.2)}))
    with pytest.raises(ExportError, match="export without --sparse-initializers"):
        save_model(sparse_model, tmp_path / "s.onnx", external=True)
    assert list(tmp_path.iterdir()) == []

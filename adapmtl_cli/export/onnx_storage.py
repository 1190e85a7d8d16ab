"""How an exported ONNX model stores its weights: sparse initializers, and external data above 2 GB.

``to_sparse_initializers_`` moves every float initializer that is smaller as a ``SparseTensorProto`` into
``graph.sparse_initializer``: the non-zero values plus their flat row-major positions as **int64** (the ONNX
spec allows no other index type), chosen when ``nnz * (itemsize + 8) < numel * itemsize``, i.e. below one third
density for fp32. onnxruntime densifies sparse initializers when it loads the model, so they shrink files,
not inference time. ``save_model`` writes one self-contained file, or, when the weights would pass protobuf's
2 GiB limit, the graph plus one ``<name>.data`` file beside it (onnx's external-data layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adapmtl_cli.errors import ExportError

# Protobuf cannot serialise a message of 2 GiB or more; leave room for the graph itself.
PROTOBUF_LIMIT = 2**31
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - 2**26
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_INDEX_BYTES = 8
# Bytes a SparseTensorProto costs beyond its values and indices (names, dims, type tags): rough, errs high.
_SPARSE_OVERHEAD = 64


def to_sparse_initializers_(model: onnx.ModelProto) -> int:
    """Move the main graph's float initializers that are smaller sparse into ``sparse_initializer``.

    Initializers that are also graph inputs (overridable at run time) stay dense. Returns how many moved.
    """
    graph = model.graph
    inputs = {value.name for value in graph.input}
    kept, moved = [], []
    for tensor in graph.initializer:
        sparse = None if tensor.name in inputs else _as_sparse(tensor)
        if sparse is None:
            kept.append(tensor)
        else:
            moved.append(sparse)
    if moved:
        names = {sparse.values.name for sparse in moved}
        value_info = [value for value in graph.value_info if value.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        graph.sparse_initializer.extend(moved)
        # The exporters record the dense type of each weight; a sparse initializer has a sparse type.
        del graph.value_info[:]
        graph.value_info.extend(value_info)
    return len(moved)


def _as_sparse(tensor: onnx.TensorProto) -> onnx.SparseTensorProto | None:
    if tensor.data_type not in _FLOAT_TYPES or len(tensor.dims) == 0:
        return None
    array = numpy_helper.to_array(tensor)
    flat = array.reshape(-1)
    nonzero = np.flatnonzero(flat != 0)
    itemsize = array.dtype.itemsize
    if nonzero.size * (itemsize + _INDEX_BYTES) + _SPARSE_OVERHEAD >= flat.size * itemsize:
        return None
    values = numpy_helper.from_array(flat[nonzero], name=tensor.name)
    if values.data_type != tensor.data_type:  # numpy has no bfloat16: keep the declared element type
        values = helper.make_tensor(tensor.name, tensor.data_type, [nonzero.size], flat[nonzero].tobytes(), raw=True)
    indices = numpy_helper.from_array(nonzero.astype(np.int64), name=f"{tensor.name}_indices")
    return helper.make_sparse_tensor(values, indices, list(tensor.dims))


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer of the main graph, dense and sparse (values plus indices)."""
    total = sum(_tensor_bytes(tensor) for tensor in model.graph.initializer)
    return total + sum(
        _tensor_bytes(sparse.values) + _tensor_bytes(sparse.indices) for sparse in model.graph.sparse_initializer
    )


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s weights are too big for one protobuf file (``EXTERNAL_DATA_THRESHOLD`` and above)."""
    return weight_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def sparse_bytes(model: onnx.ModelProto) -> int:
    return sum(_tensor_bytes(s.values) + _tensor_bytes(s.indices) for s in model.graph.sparse_initializer)


def save_model(model: onnx.ModelProto, path: Path, *, external: bool) -> Path | None:
    """Write ``model`` to ``path``; with ``external`` its dense initializers go to ``<name>.data`` beside it.

    Returns the data file's path, or ``None`` for a single file.

    Raises:
        ExportError: a single file would pass 2 GiB, or the sparse initializers alone would (onnx keeps them
            inside the graph even with external data).
    """
    path = Path(path)
    if external:
        if sparse_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
            raise ExportError(
                f"sparse initializers of {path.name!r} take {sparse_bytes(model) / 2**30:.1f} GiB, more than an "
                "ONNX file holds (onnx keeps them out of external data); export without --sparse-initializers"
            )
        data = path.with_name(path.name + ".data")
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
        return data
    if weight_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
        raise ExportError(f"{path.name!r} would pass protobuf's 2 GiB limit; save it with external data")
    onnx.save_model(model, str(path))
    return None

"""ONNX export and verification: the exporters, the checked file written atomically, and onnxruntime parity.

ONNX goes through the dynamo exporter by default (dict/tuple outputs, dynamic batch) with the TorchScript
exporter as the ``legacy`` fallback. The exporter writes into a temp folder beside the target
(``files/atomic.temp_folder``), the weights are then re-stored by ``onnx_storage`` (optional sparse
initializers; external data above 2 GB), ``onnx.checker`` runs on the result, the files are moved into place
(data first, graph last) and onnxruntime on the CPU compares the graph with PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.onnx_storage import needs_external_data, save_model, to_sparse_initializers_
from adapmtl_cli.files.atomic import export_write_error, move_into_place, temp_folder

EXPORTERS = ("dynamo", "legacy")
_WRITE_ERROR = export_write_error("ONNX file")
INPUT_NAME = "image"
# Loggers the exporters write warnings and progress to; they get their own stderr handlers, so redirecting
# sys.stderr does not silence them.
_NOISY_LOGGERS = ("torch", "torch.onnx", "torch.export", "torch._export", "onnxscript")


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote: the graph file, its external data file if any, and how."""

    path: Path
    bytes: int  # the graph file plus its external data
    opset: int
    exporter: str
    external_data: Path | None
    sparse_initializers: int


@dataclass(frozen=True)
class OnnxParity:
    """Largest absolute difference between onnxruntime and PyTorch, overall and per output name."""

    max_abs_diff: float
    per_output: dict[str, float]
    batch_sizes: tuple[int, ...]


def export_onnx(
    module: nn.Module,
    example: Tensor,
    path: Path,
    output_names: list[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    exporter: str = "dynamo",
    sparse_initializers: bool = False,
    external_data: bool | None = None,
) -> OnnxExport:
    """Export ``module`` (one image tensor in, a tuple of tensors out) to ONNX and check it.

    The module runs in eval mode during export and gets its previous mode back afterwards. The graph input is
    named ``image``; outputs take ``output_names`` in order; with ``dynamic_batch`` dimension 0 is symbolic.

    Args:
        sparse_initializers: store mostly-zero float weights as ONNX sparse initializers (int64 indices).
        external_data: put the weights in ``<name>.data`` beside the graph; ``None`` does so only when they
            would pass protobuf's 2 GiB limit.

    Raises:
        ExportError: unknown exporter, output count mismatch, the exporter or the ONNX checker fails, or the
            files cannot be written.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown ONNX exporter {exporter!r}; use one of {list(EXPORTERS)}")
    path = Path(path)
    example = example.detach()
    was_training = module.training
    module.eval()
    try:
        _run_module(module, example, output_names)
        with temp_folder(path, parents=False) as work:
            return _export_in(
                work,
                module,
                example,
                path,
                output_names,
                opset,
                dynamic_batch,
                exporter,
                sparse_initializers,
                external_data,
            )
    except OSError as exc:
        raise _WRITE_ERROR(path, exc) from exc
    finally:
        module.train(was_training)


def _export_in(
    work: Path,
    module: nn.Module,
    example: Tensor,
    path: Path,
    output_names: list[str],
    opset: int | None,
    dynamic_batch: bool,
    exporter: str,
    sparse_initializers: bool,
    external_data: bool | None,
) -> OnnxExport:
    """Export into the temp folder ``work``, re-store the weights, check, then move the files to ``path``."""
    raw = work / "raw" / path.name
    raw.parent.mkdir()
    _run_exporter(module, example, str(raw), output_names, opset, dynamic_batch, exporter)
    model = onnx.load(str(raw))  # pulls in any external data the exporter wrote
    moved = to_sparse_initializers_(model) if sparse_initializers else 0
    external = needs_external_data(model) if external_data is None else external_data
    version = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    final = work / path.name
    data = save_model(model, final, external=external)
    del model
    try:
        # onnx's shape inference types sparse initializers as sparse tensors, which Conv and friends reject,
        # so files holding them get the structural check only.
        onnx.checker.check_model(str(final), full_check=not moved)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ExportError(f"exported ONNX model fails onnx.checker ({_first_line(exc)}); {_hint(exporter)}") from exc
    size = _install(final, data, path)
    installed_data = path.with_name(path.name + ".data") if data is not None else None
    return OnnxExport(path, size, int(version), exporter, installed_data, moved)


def _install(final: Path, data: Path | None, path: Path) -> int:
    """Move the checked files into place (data first, graph last); remove a stale data file; return bytes."""
    beside = path.with_name(path.name + ".data")
    if data is None and beside.exists():
        beside.unlink()  # left by an earlier export with external data; it no longer belongs to this graph
    move_into_place([(data, beside), (final, path)] if data is not None else [(final, path)])
    return path.stat().st_size + (beside.stat().st_size if data is not None else 0)


def _run_exporter(
    module: nn.Module,
    example: Tensor,
    tmp: str,
    output_names: list[str],
    opset: int | None,
    dynamic_batch: bool,
    exporter: str,
) -> None:
    names = list(output_names)
    try:
        with _quiet(), torch.no_grad():
            if exporter == "dynamo":
                # Dim.DYNAMIC, not a named Dim: torch.export specialises a named dim whose example size is 1.
                dynamic_shapes = ({0: Dim.DYNAMIC},) if dynamic_batch else None
                # External data always: the temp copy may pass 2 GiB; onnx_storage decides the final layout.
                torch.onnx.export(
                    module,
                    (example,),
                    tmp,
                    dynamo=True,
                    external_data=True,
                    input_names=[INPUT_NAME],
                    output_names=names,
                    opset_version=opset,
                    dynamic_shapes=dynamic_shapes,
                    verbose=False,
                )
            else:
                dynamic_axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if dynamic_batch else None
                torch.onnx.export(
                    module,
                    (example,),
                    tmp,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=names,
                    opset_version=opset,
                    dynamic_axes=dynamic_axes,
                    verbose=False,
                )
    except Exception as exc:  # the exporters raise anything from deep inside torch.export or TorchScript
        raise ExportError(
            f"{exporter} ONNX export failed ({type(exc).__name__}: {_first_line(exc)}); {_hint(exporter)}"
        ) from exc


def _hint(exporter: str) -> str:
    if exporter == "dynamo":
        return "retry with --exporter legacy"
    return "retry with --exporter dynamo or simplify the model's forward"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' prints, warnings and log records for the duration of the block."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def check_onnx_parity(
    module: nn.Module, path: Path, inputs: list[Tensor], output_names: list[str], *, atol: float = 1e-4
) -> OnnxParity:
    """Run each input through onnxruntime (CPU) and through ``module`` in eval mode; compare every output.

    Raises:
        ExportError: onnxruntime is missing or cannot run the file, outputs differ in number or shape, or
            any difference exceeds ``atol``.
    """
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ExportError(f"onnxruntime cannot load {str(path)!r} ({_first_line(exc)}); re-export the model") from exc
    input_name = session.get_inputs()[0].name
    per_output = dict.fromkeys(output_names, 0.0)
    was_training = module.training
    module.eval()
    try:
        for x in inputs:
            expected = _run_module(module, x, output_names)
            try:
                got = session.run(list(output_names), {input_name: x.detach().cpu().numpy()})
            except Exception as exc:  # onnxruntime raises its own pybind exception types
                raise ExportError(
                    f"onnxruntime fails on an input of shape {list(x.shape)!r} ({_first_line(exc)}); "
                    "re-export with a dynamic batch or matching input"
                ) from exc
            for name, want, have in zip(output_names, expected, got, strict=True):
                if tuple(want.shape) != tuple(have.shape):
                    raise ExportError(
                        f"ONNX output {name!r} has shape {list(have.shape)!r}, PyTorch {list(want.shape)!r}; "
                        "re-export the model"
                    )
                per_output[name] = max(per_output[name], _max_abs_diff(want, have))
    finally:
        module.train(was_training)
    worst_name = max(per_output, key=per_output.__getitem__, default=None)
    worst = per_output[worst_name] if worst_name is not None else 0.0
    if worst > atol:
        raise ExportError(
            f"ONNX output {worst_name!r} differs from PyTorch by {worst:.3g} (atol {atol:g}); "
            "re-export, or try the other --exporter"
        )
    return OnnxParity(max_abs_diff=worst, per_output=per_output, batch_sizes=tuple(int(x.shape[0]) for x in inputs))


def _import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError("onnxruntime is not installed; pip install onnxruntime") from exc
    return onnxruntime


def _run_module(module: nn.Module, x: Tensor, output_names: list[str]) -> tuple[Tensor, ...]:
    """Run ``module`` without autograd and check it returns one tensor per output name."""
    with torch.no_grad():
        outputs = module(x)
    if isinstance(outputs, Tensor):
        outputs = (outputs,)
    if not isinstance(outputs, (tuple, list)) or not all(isinstance(item, Tensor) for item in outputs):
        raise ExportError(
            f"model for ONNX export must return a tensor or a tuple of tensors, got "
            f"{type(outputs).__name__!r}; wrap it so it returns a tuple"
        )
    if len(outputs) != len(output_names):
        raise ExportError(
            f"model returns {len(outputs)} outputs but {len(output_names)} names were given "
            f"({output_names!r}); pass one name per output"
        )
    return tuple(outputs)


def _max_abs_diff(want: Tensor, have: object) -> float:
    """Largest |a - b|, counting equal values (infinities included) and NaN against NaN as equal."""
    a = want.detach().cpu().to(torch.float64).numpy()
    b = np.asarray(have, dtype=np.float64)
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        diff = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max())

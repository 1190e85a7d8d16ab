"""ONNX export and verification: the exporters, the checked file written atomically, and onnxruntime parity.

ONNX goes through the dynamo exporter by default (dict/tuple outputs, dynamic batch) with the TorchScript
exporter as the ``legacy`` fallback. The exporter writes into a temp folder beside the target
(``files/atomic.temp_folder``), the weights are then re-stored by ``onnx_storage`` (optional sparse
initializers; external data above 2 GB), ``onnx.checker`` runs on the result, and, given a ``verify`` check
(onnxruntime parity), the file is verified *in the temp folder*: only a verified file is moved into place (data
first, graph last), so a failed check leaves no ``model.onnx`` beside the verified files.

:func:`export_verified_onnx` is the export with onnxruntime parity. When parity fails and the reference model
meets tied max-pool windows (``onnx_ties``: equal maxima whose element the runtimes pick differently, common
after pruning left constant channels), it re-exports a copy whose ``MaxPool2d(return_indices=True)`` modules
compute their indices with ``argmax``, whose tie-breaking ONNX specifies as PyTorch's, and verifies that copy
against the original model: the file written then matches PyTorch on the same check, with no tolerance widened.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.onnx_storage import needs_external_data, save_model, to_sparse_initializers_
from adapmtl_cli.export.onnx_ties import tie_stable_copy, tied_windows
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
    tie_stable_pools: int = 0
    """Max-pools exported with ``argmax`` indices because a plain export failed parity on tied windows."""


@dataclass(frozen=True)
class OnnxParity:
    """Largest absolute difference between onnxruntime and PyTorch, overall and per output name.

    ``scale`` holds each output's largest finite magnitude in PyTorch: float32 rounding grows with it, so an
    output passes when its difference is at most ``atol * max(1, scale)`` (:meth:`passes`), an absolute tolerance
    for outputs of order one and a relative one for larger outputs (an ASPP head's logits of magnitude 20 differ
    by 1.01e-4 after a correct export).
    """

    max_abs_diff: float
    per_output: dict[str, float]
    batch_sizes: tuple[int, ...]
    scale: dict[str, float] = field(default_factory=dict)

    def allowed(self, name: str, atol: float) -> float:
        """The largest difference output ``name`` may show: ``atol`` times its scale, at least ``atol``."""
        return atol * max(1.0, self.scale.get(name, 1.0))

    def failing(self, atol: float) -> list[str]:
        """The outputs whose difference exceeds :meth:`allowed`, worst (relative to its allowance) first."""
        over = [name for name, diff in self.per_output.items() if not diff <= self.allowed(name, atol)]
        return sorted(over, key=lambda name: -self.per_output[name] / self.allowed(name, atol))

    def passes(self, atol: float) -> bool:
        """Whether every output is within its allowance."""
        return not self.failing(atol)


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
    verify: Callable[[Path], object] | None = None,
) -> OnnxExport:
    """Export ``module`` (one image tensor in, a tuple of tensors out) to ONNX and check it.

    The module runs in eval mode during export and gets its previous mode back afterwards. The graph input is
    named ``image``; outputs take ``output_names`` in order; with ``dynamic_batch`` dimension 0 is symbolic.

    Args:
        sparse_initializers: store mostly-zero float weights as ONNX sparse initializers (int64 indices).
        external_data: put the weights in ``<name>.data`` beside the graph; ``None`` does so only when they
            would pass protobuf's 2 GiB limit.
        verify: called with the checked file, still under its temporary name, before it is moved to ``path``;
            an ``ExportError`` it raises leaves ``path`` as it was.

    Raises:
        ExportError: unknown exporter, output count mismatch, the exporter, the ONNX checker or ``verify``
            fails, or the files cannot be written.
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
                verify,
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
    verify: Callable[[Path], object] | None,
) -> OnnxExport:
    """Export into the temp folder ``work``, re-store the weights, check and verify, then move them to ``path``."""
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
    if verify is not None:
        verify(final)
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
            any output's difference exceeds its allowance (:meth:`OnnxParity.allowed`).
    """
    parity = measure_onnx_parity(module, path, inputs, output_names)
    if not parity.passes(atol):
        raise ExportError(f"{_difference(parity, atol)}; re-export, or try the other --exporter")
    return parity


def _difference(parity: OnnxParity, atol: float) -> str:
    failing = parity.failing(atol)
    worst = failing[0] if failing else max(parity.per_output, key=parity.per_output.__getitem__)
    return (
        f"ONNX output {worst!r} differs from PyTorch by {parity.per_output[worst]:.3g} "
        f"(allowed {parity.allowed(worst, atol):.3g}: atol {atol:g} times max(1, largest |output|))"
    )


def measure_onnx_parity(module: nn.Module, path: Path, inputs: list[Tensor], output_names: list[str]) -> OnnxParity:
    """The largest differences between onnxruntime (CPU) and ``module`` (eval mode) over ``inputs``.

    Raises:
        ExportError: onnxruntime is missing or cannot run the file, or outputs differ in number or shape.
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
    scale = dict.fromkeys(output_names, 0.0)
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
                scale[name] = max(scale[name], _largest_magnitude(want))
    finally:
        module.train(was_training)
    worst = max(per_output.values(), default=0.0)
    sizes = tuple(int(x.shape[0]) for x in inputs)
    return OnnxParity(max_abs_diff=worst, per_output=per_output, batch_sizes=sizes, scale=scale)


def export_verified_onnx(
    module: nn.Module,
    reference: nn.Module,
    example: Tensor,
    inputs: list[Tensor],
    path: Path,
    output_names: list[str],
    *,
    exporter: str = "dynamo",
    sparse_initializers: bool = False,
    atol: float = 1e-4,
) -> tuple[OnnxExport, OnnxParity]:
    """Export ``module`` to ``path`` only once onnxruntime matches ``reference`` on every input.

    "Matches" means every output within ``atol`` times max(1, its largest |value|) (:meth:`OnnxParity.allowed`).

    A plain export that fails parity while ``reference`` meets tied max-pool windows is retried with
    tie-stable max-pool indices (see the module docstring); :attr:`OnnxExport.tie_stable_pools` says so.

    Raises:
        ExportError: as :func:`export_onnx`; or no export matches, the message naming tied windows when they
            are the cause. ``path`` is never left holding an unverified file.
    """
    measured: list[OnnxParity] = []

    def verify(candidate: Path) -> None:
        measured.append(measure_onnx_parity(reference, candidate, inputs, output_names))
        if not measured[-1].passes(atol):
            raise ExportError(f"{_difference(measured[-1], atol)}; re-export, or try the other --exporter")

    def export(candidate: nn.Module) -> OnnxExport:
        return export_onnx(
            candidate,
            example,
            path,
            output_names,
            exporter=exporter,
            sparse_initializers=sparse_initializers,
            verify=verify,
        )

    try:
        return export(module), measured[-1]
    except ExportError:
        if not measured or measured[-1].passes(atol):
            raise  # the export failed before or beside parity
        tied, total = tied_windows(reference, inputs)
        if not tied:
            raise
        first = measured[-1]
    written = _export_tie_stable(module, export, first, atol, f"{tied:,} of {total:,}")
    return written, measured[-1]


def _export_tie_stable(
    module: nn.Module, export: Callable[[nn.Module], OnnxExport], first: OnnxParity, atol: float, tied: str
) -> OnnxExport:
    """``export`` a copy of ``module`` with tie-stable max-pools after ``first`` failed parity with ``tied`` ties.

    Passing proves the ties were the cause; failing parity again proves they were not.
    """
    cause = (
        f"{_difference(first, atol)}, which tied max-pool windows may explain: the model's max-pools with indices "
        f"(MaxUnpool) meet {tied} windows that hold their maximum more than once (constant channels left by "
        "pruning do, and ReLU's zeros), and onnxruntime may pick another element of a tied window than PyTorch "
        "(with either exporter)"
    )
    try:
        stable, swapped = tie_stable_copy(module)
    except Exception as exc:  # deep-copying a user's module may fail in any way
        raise ExportError(f"{cause}; the model cannot be copied to make them tie-stable ({_first_line(exc)})") from exc
    if not swapped:
        raise ExportError(
            f"{cause}; they are functional calls (F.max_pool2d(..., return_indices=True)), which the export cannot "
            "make tie-stable: use nn.MaxPool2d(return_indices=True) modules"
        )
    try:
        written = export(stable)
    except ExportError as exc:
        if "differs from PyTorch" not in str(exc):
            raise ExportError(f"{cause}; the re-export with tie-stable (argmax) indices failed: {exc}") from exc
        raise ExportError(
            f"{_difference(first, atol)}; re-export, or try the other --exporter (tied max-pool windows are not the "
            f"cause: with tie-stable argmax indices it still differs, {str(exc).partition(';')[0]})"
        ) from exc
    return replace(written, tie_stable_pools=swapped)


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


def _largest_magnitude(want: Tensor) -> float:
    """The largest finite |value| of an output (0 when it has none)."""
    a = want.detach().cpu().to(torch.float64)
    finite = a[torch.isfinite(a)]
    return float(finite.abs().max()) if finite.numel() else 0.0

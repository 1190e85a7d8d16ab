"""``export``'s latency step: time the ONNX files it wrote against the run's dense model in one onnxruntime loop.

The dense checkpoint is exported the same way as the files (same exporter, same sparse-initializer choice) to
a temporary folder outside the export folder, checked against its PyTorch model, and timed beside the files
(``export/latency.py``: interleaved, median of ``repeats``).

With an ``input_shape`` other than the run's, the written files cannot be timed as they are (their spatial size
is fixed when traced): each shipped model is then re-exported at that shape to the temporary folder, checked
against its own PyTorch module at that shape, and timed there, still under its file name. This answers "how much
faster at my deployment resolution": at the 48×64 inputs of small benchmarks, per-operator overhead hides most
of what removing channels saves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapmtl_cli.config import LatencyAtBatch, LatencyManifest
from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.latency import measure_latency
from adapmtl_cli.export.onnx import export_verified_onnx

DENSE_LABEL = "dense"
"""The dense reference's label in the latency measurement (the files are labelled by their names)."""
CHECK_BATCH_SIZES = (1, 3)
"""Batch sizes a file exported only for timing is checked at (against its own PyTorch module)."""
CHECK_ATOL = 1e-4


def write_timed_onnx(
    module: nn.Module,
    path: Path,
    names: list[str],
    input_shape: Sequence[int],
    *,
    exporter: str,
    sparse_initializers: bool,
) -> Path:
    """Export ``module`` (task tensors in ``names`` order) at one input of ``input_shape``, checked against itself.

    Raises:
        ExportError: the export fails, or onnxruntime does not match ``module`` at ``input_shape``.
    """
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(2, *input_shape, generator=gen)
    inputs = [torch.rand(b, *input_shape, generator=gen) for b in CHECK_BATCH_SIZES]
    module.eval()
    written, _ = export_verified_onnx(
        module,
        module,
        example,
        inputs,
        path,
        names,
        exporter=exporter,
        sparse_initializers=sparse_initializers,
        atol=CHECK_ATOL,
    )
    return written.path


def time_export(
    dense: nn.Module,
    files: Mapping[str, Path],
    modules: Mapping[str, nn.Module],
    names: list[str],
    run_shape: Sequence[int],
    *,
    input_shape: Sequence[int] | None,
    batch: int,
    threads: int,
    repeats: int,
    exporter: str,
    sparse_initializers: bool,
) -> LatencyManifest:
    """Time ``files`` (file name → path) against ``dense`` (task tensors in ``names`` order) in one loop.

    Args:
        modules: file name → the PyTorch module each file holds; used only when ``input_shape`` differs from
            ``run_shape``, to export each at that shape.
        input_shape: one input without the batch dimension to time at (None: ``run_shape``, the files as written).

    Raises:
        ExportError: an export or the measurement failed (the export's own files are untouched).
    """
    shape = tuple(run_shape) if input_shape is None else tuple(input_shape)
    reshaped = shape != tuple(run_shape)
    options: dict[str, Any] = {"exporter": exporter, "sparse_initializers": sparse_initializers}
    with tempfile.TemporaryDirectory(prefix="adapmtl-latency-onnx-") as tmp:  # never in the export folder
        timed = {DENSE_LABEL: write_timed_onnx(dense, Path(tmp) / "dense.onnx", names, shape, **options)}
        for name, path in files.items():
            if not reshaped:
                timed[name] = path
                continue
            if name not in modules:
                raise ExportError(f"no model to re-export {name!r} at input shape {list(shape)}")
            timed[name] = write_timed_onnx(modules[name], Path(tmp) / name, names, shape, **options)
        measured = measure_latency(timed, shape, batch=batch, threads=threads, repeats=repeats)

    def at(size: int) -> LatencyAtBatch:
        medians = measured.at(size)
        dense_ms = medians.pop(DENSE_LABEL)
        return LatencyAtBatch(dense_ms=dense_ms, files=medians)

    main = at(batch)
    return LatencyManifest(
        batch=batch,
        threads=measured.threads,
        repeats=measured.repeats,
        warmup=measured.warmup,
        onnxruntime=measured.onnxruntime,
        dense_ms=main.dense_ms,
        files=main.files,
        batch1=at(1),
        input_shape=list(shape) if reshaped else None,
    )


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3x288x384"`` (or ``"3,288,384"``) → ``(3, 288, 384)``.

    Raises:
        ValueError: not positive whole numbers separated by ``x`` or ``,``.
    """
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{text!r} is not an input shape like 3x288x384 (positive whole numbers, no batch)")
    return tuple(int(p) for p in parts)


__all__ = ["DENSE_LABEL", "parse_input_shape", "time_export", "write_timed_onnx"]

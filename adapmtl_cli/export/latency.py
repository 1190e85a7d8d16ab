"""onnxruntime CPU latency of several ONNX files, measured side by side so they are comparable.

:func:`measure_latency` opens one session per file with the same settings (``CPUExecutionProvider``, a fixed
intra-op thread count, inter-op 1, sequential execution, no spinning pool threads), runs each a few times
untimed, then times the files **interleaved**: every repetition runs each file once, in turn, so a change of
load on the machine (another process, frequency scaling) hits every file alike instead of whichever ran last.
It does so at batch 1 and at one more batch size, and reports the median per file and batch, in milliseconds.

The inputs are random ``float32`` tensors (seeded, the same for every file) of shape ``(batch, *input_shape)``;
the files need a dynamic batch axis (``export_onnx`` writes one) unless ``batch`` is 1.

``export`` uses it to time ``model.onnx`` (and ``model.shrunk.onnx``) against the run's dense checkpoint
exported the same way; the defaults are ``config.LATENCY_*``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapmtl_cli.config import LATENCY_BATCH, LATENCY_REPEATS, LATENCY_THREADS, LATENCY_WARMUP
from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.onnx import _first_line, _import_onnxruntime

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
"""onnxruntime's input type names -> the numpy dtype fed (float32 for anything else)."""


@dataclass(frozen=True)
class Latency:
    """What :func:`measure_latency` measured: median milliseconds per file label and batch size.

    Attributes:
        medians_ms: ``{label: {batch: median ms}}``, labels in the order given, batches ascending.
        batches: the batch sizes measured (1 and ``batch``; just 1 when ``batch`` is 1).
        threads, repeats, warmup: the settings used.
        onnxruntime: the onnxruntime version that ran them.
    """

    medians_ms: dict[str, dict[int, float]]
    batches: tuple[int, ...]
    threads: int
    repeats: int
    warmup: int
    onnxruntime: str

    def at(self, batch: int) -> dict[str, float]:
        """``{label: median ms}`` at ``batch`` (one of :attr:`batches`)."""
        return {label: by_batch[batch] for label, by_batch in self.medians_ms.items()}


def session_options(threads: int) -> Any:
    """The ``onnxruntime.SessionOptions`` every timed session uses: ``threads`` intra-op threads, one inter-op
    thread, sequential execution, pool threads that do not spin between runs (they would steal the CPU from
    the next file in the interleaved loop), warnings only."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def measure_latency(
    paths: Sequence[Path] | Mapping[str, Path],
    input_shape: Sequence[int],
    *,
    batch: int = LATENCY_BATCH,
    threads: int = LATENCY_THREADS,
    repeats: int = LATENCY_REPEATS,
    warmup: int = LATENCY_WARMUP,
    clock: Callable[[], float] = time.perf_counter,
) -> Latency:
    """Median onnxruntime (CPU) latency of each ONNX file at batch 1 and at ``batch``, timed interleaved.

    Example::

        from adapmtl_cli.export.latency import measure_latency
        lat = measure_latency({"dense": Path("dense.onnx"), "pruned": Path("run/export/model.onnx")}, [3, 32, 48])
        lat.at(8)  # {"dense": 3.18, "pruned": 3.21}

    Args:
        paths: the files; a mapping gives them labels, a sequence is labelled by file name (names must differ).
        input_shape: one input without the batch dimension (``components.json``'s ``input_shape``).
        batch: the batch size timed besides 1 (``LATENCY_BATCH``).
        threads: onnxruntime intra-op threads per session (``LATENCY_THREADS``); see :func:`session_options`.
        repeats: timed runs per file and batch size (``LATENCY_REPEATS``); the median is kept.
        warmup: untimed runs per file and batch size first (``LATENCY_WARMUP``).
        clock: seconds, monotonic (tests pass a fake).

    Raises:
        ExportError: a bad setting or duplicate label, onnxruntime missing, or a file it cannot load or run.
    """
    files = _labelled(paths)
    for name, value, least in (("batch", batch, 1), ("threads", threads, 1), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < least:
            raise ExportError(f"latency {name} must be a positive integer, got {value!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ExportError(f"latency warmup must be a whole number, got {warmup!r}")
    ort = _import_onnxruntime()
    sessions = {label: _session(ort, path, threads) for label, path in files.items()}
    batches = tuple(sorted({1, batch}))
    medians: dict[str, dict[int, float]] = {label: {} for label in files}
    for size in batches:
        feeds = {label: _feed(session, size, input_shape) for label, session in sessions.items()}
        for _ in range(warmup):
            for label, session in sessions.items():
                _run(session, feeds[label], files[label])
        samples: dict[str, list[float]] = {label: [] for label in files}
        for _ in range(repeats):
            for label, session in sessions.items():  # round-robin: each repetition runs every file once
                start = clock()
                _run(session, feeds[label], files[label])
                samples[label].append((clock() - start) * 1000.0)
        for label, times in samples.items():
            medians[label][size] = float(statistics.median(times))
    return Latency(medians, batches, threads, repeats, warmup, str(ort.__version__))


def _labelled(paths: Sequence[Path] | Mapping[str, Path]) -> dict[str, Path]:
    if isinstance(paths, Mapping):
        files = {str(label): Path(path) for label, path in paths.items()}
    else:
        files = {}
        for path in map(Path, paths):
            if path.name in files:
                raise ExportError(f"two ONNX files are named {path.name!r}; pass a mapping of labels to paths")
            files[path.name] = path
    if not files:
        raise ExportError("no ONNX files to time")
    return files


def _session(ort: Any, path: Path, threads: int) -> Any:
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ExportError(f"onnxruntime cannot load {str(path)!r} ({_first_line(exc)}); re-export the model") from exc


def _feed(session: Any, batch: int, input_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """The one input of ``session`` at ``batch``: uniform noise seeded by the batch (the same for every file)."""
    first = session.get_inputs()[0]
    dtype = _NUMPY_DTYPES.get(getattr(first, "type", ""), np.float32)
    values = np.random.default_rng(batch).random((batch, *map(int, input_shape)))
    return {first.name: values.astype(dtype)}


def _run(session: Any, feed: dict[str, np.ndarray], path: Path) -> None:
    try:
        session.run(None, feed)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        shape = list(next(iter(feed.values())).shape)
        raise ExportError(
            f"onnxruntime fails on {str(path)!r} with an input of shape {shape!r} ({_first_line(exc)}); "
            "the latency needs a dynamic batch axis: re-export the model, or pass --no-latency"
        ) from exc


__all__ = ["Latency", "measure_latency", "session_options"]

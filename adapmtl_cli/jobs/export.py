"""Turn a finished run into deployment files, each verified: dense and sparse safetensors, ONNX, shrunk ONNX.

The model is rebuilt the way ``prune`` built it (same checkpoint, ``--factory`` or trusted pickle), the baked
weights are loaded with ``strict=True``, and the output wrapper returns the task tensors in task order so the
ONNX outputs are named after the tasks. Every ONNX file, the shrunk one included, is compared in onnxruntime
with the pruned PyTorch model at several batch sizes.

With ``latency``, the ONNX files are then timed in onnxruntime against the run's dense checkpoint, exported the
same way to a temporary file outside the export folder (``export/latency.py``); ``manifest.json`` is saved
before the measurement and again with its ``latency`` entry, so a failed or interrupted measurement still leaves
a complete export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapmtl_cli.config import (
    LATENCY_BATCH,
    LATENCY_REPEATS,
    LATENCY_THREADS,
    ChannelExport,
    ComponentsManifest,
    ExportManifest,
    LatencyManifest,
    PruneConfig,
    RunReport,
    ShrinkManifest,
)
from adapmtl_cli.errors import ConfigError, ExportError
from adapmtl_cli.export.channel_model import ONNX_FILE, write_channel_model
from adapmtl_cli.export.dense import retie_state, save_dense
from adapmtl_cli.export.onnx import EXPORTERS, OnnxExport, OnnxParity, export_verified_onnx
from adapmtl_cli.export.shrink import shrink_model, zero_filters
from adapmtl_cli.export.sparse_codec import check_sparse_roundtrip, load_sparse, save_sparse
from adapmtl_cli.export.sparse_tensor import VALUES_DTYPES
from adapmtl_cli.files.atomic import write_model
from adapmtl_cli.files.reading import read_model, read_safetensors
from adapmtl_cli.files.rundir import RunDir, run_lock
from adapmtl_cli.jobs.export_latency import time_export
from adapmtl_cli.jobs.run_inputs import check_checkpoint_identity
from adapmtl_cli.model.loading import load_model, load_state_into
from adapmtl_cli.model.outputs import OutputMapping

# Batch sizes every ONNX file is checked at (the export itself traces batch 2, so all differ from it).
PARITY_BATCH_SIZES = (1, 3, 5)
PARITY_ATOL = 1e-4

Phase = Callable[[str], AbstractContextManager[object]]
"""Wraps each stage of the export, given what it does (``cli.ui.spinner`` shows it)."""


@dataclass(frozen=True)
class LatencyRequest:
    """What ``export_run`` times the ONNX files with (``config.LATENCY_*`` by default)."""

    batch: int = LATENCY_BATCH
    threads: int = LATENCY_THREADS
    repeats: int = LATENCY_REPEATS
    input_shape: tuple[int, ...] | None = None
    """One input (no batch) to time at; None: the run's (``components.json``'s ``input_shape``)."""


class TaskOutputs(nn.Module):
    """Wraps a model so forward returns ``tuple(task tensors)`` in a fixed task order (for ONNX)."""

    def __init__(self, model: nn.Module, paths: dict[str, list[Any]]) -> None:
        super().__init__()
        self.model = model
        self.mapping = OutputMapping(paths={t: tuple(p) for t, p in paths.items()}, how="manifest")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.mapping.select(self.model(x)).values())


def _metadata(path: Path) -> dict[str, str] | None:
    """The safetensors header's metadata (the file was just read in full, so the header is sound)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def load_pruned_model(run: Path) -> tuple[nn.Module, PruneConfig, ComponentsManifest]:
    """The user's model class holding the run's baked (pruned) weights, in eval mode."""
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise ConfigError(f"run folder {str(run)!r} does not exist")
    cfg = read_model(rd.config, PruneConfig)
    manifest = read_model(rd.components, ComponentsManifest)
    if not rd.weights.exists():
        raise ConfigError(f"run {str(run)!r} has no pruned weights yet; finish it with `adapmtl resume {run}`")
    rebuild = f"rebuild them from the saved state with `adapmtl resume {run}`"
    weights = read_safetensors(rd.weights, ConfigError, "pruned weights", rebuild)
    weights = retie_state(weights, _metadata(rd.weights), repr(str(rd.weights)))  # tied tensors are stored once
    check_checkpoint_identity(cfg, "export")
    loaded = load_model(Path(cfg.checkpoint), factory=cfg.factory, trust_pickle=cfg.trust_pickle)
    load_state_into(loaded.model, weights, repr(str(rd.weights)))
    return loaded.model.eval(), cfg, manifest


def export_run(
    run: Path,
    *,
    out_dir: Path | None = None,
    onnx: bool = False,
    exporter: str = "dynamo",
    values_dtype: str | None = None,
    sparse_initializers: bool = False,
    shrink: bool = False,
    latency: bool = False,
    latency_batch: int | None = None,
    latency_threads: int | None = None,
    latency_repeats: int | None = None,
    latency_input: Sequence[int] | None = None,
    phase: Phase | None = None,
) -> ExportManifest:
    """Write and verify the export files of ``run``; returns (and saves) the export manifest.

    Args:
        onnx: also write ``model.onnx``, checked with onnxruntime at ``PARITY_BATCH_SIZES``.
        exporter: ``dynamo`` or ``legacy`` (TorchScript), for every ONNX file.
        values_dtype: ``fp16`` or ``bf16`` to store the sparse file's float values narrower.
        sparse_initializers: store mostly-zero ONNX weights as sparse initializers.
        shrink: remove the channels the graph proves removable and write ``model.shrunk.onnx``.
        latency: when an ONNX file was written, time it in onnxruntime against the dense checkpoint and record
            the medians as the manifest's ``latency``.
        latency_batch, latency_threads, latency_repeats: the batch timed besides 1, the intra-op threads and
            the timed runs (default ``config.LATENCY_BATCH``, ``LATENCY_THREADS``, ``LATENCY_REPEATS``).
        latency_input: one input without the batch dimension to time at instead of the run's (a deployment
            resolution, say ``(3, 288, 384)``): every model is re-exported at it for the timing only
            (``jobs/export_latency.py``); the files written keep the run's shape.
        phase: wraps each stage (``"exporting"``, then the measurement), given what it does.
    """
    timing = (latency_batch, latency_threads, latency_repeats)
    narrow = _check_options(
        exporter, values_dtype, sparse_initializers and not (onnx or shrink), timing, latency, onnx or shrink
    )
    given: dict[str, Any] = {
        name: v for name, v in zip(("batch", "threads", "repeats"), timing, strict=True) if v is not None
    }
    if latency_input is not None:
        given["input_shape"] = _checked_input(latency_input, latency, onnx or shrink)
    if not RunDir(run).root.is_dir():
        raise ConfigError(f"run folder {str(run)!r} does not exist")
    with run_lock(Path(run)):
        return _export_locked(
            run,
            out_dir,
            onnx,
            exporter,
            narrow,
            sparse_initializers,
            shrink,
            LatencyRequest(**given) if latency else None,
            phase or _no_phase,
        )


def _export_locked(
    run: Path,
    out_dir: Path | None,
    onnx: bool,
    exporter: str,
    narrow: torch.dtype | None,
    sparse_initializers: bool,
    shrink: bool,
    latency: LatencyRequest | None,
    phase: Phase,
) -> ExportManifest:
    """``export_run``'s work, with the run folder locked."""
    with phase("exporting"):
        model, cfg, manifest = load_pruned_model(run)
        if latency is not None and latency.input_shape is not None:
            _check_rank(latency.input_shape, manifest.input_shape)
        target = Path(out_dir) if out_dir is not None else RunDir(run).export_dir
        target.mkdir(parents=True, exist_ok=True)
        fields = _safetensors_files(model, target, narrow)
        job = _OnnxJob.of(model, manifest, exporter, sparse_initializers)
        modules: dict[str, nn.Module] = {}  # file name -> the model it holds (for timing at another shape)
        if onnx:
            fields |= _onnx_fields(job, target)
            modules["model.onnx"] = job.reference
        if shrink:
            fields |= _shrink_fields(job, model, manifest, target, modules)
        fields |= _channel_fields(run, job, model, cfg, manifest, target, onnx, modules)
        result = ExportManifest(sparse_roundtrip="bit-exact", **fields)
        write_model(target / "manifest.json", result)
    files = _onnx_files(result)
    if latency is None or not files:
        return result
    sizes = "batch 1" + (f" and {latency.batch}" if latency.batch != 1 else "")
    threads = f"{latency.threads} thread{'s' if latency.threads != 1 else ''}"
    at = "" if latency.input_shape is None else f", re-exported at {'x'.join(map(str, latency.input_shape))}"
    with phase(f"timing onnxruntime latency against the dense model ({sizes}, {threads}{at})"):
        measured = _measure_latency(job, cfg, manifest, files, modules, latency)
    result = result.model_copy(update={"latency": measured})
    write_model(target / "manifest.json", result)
    return result


def _no_phase(message: str) -> AbstractContextManager[object]:
    return nullcontext()


def _onnx_files(result: ExportManifest) -> dict[str, Path]:
    """The ONNX files this export wrote, by file name: ``model.onnx``, then ``model.shrunk.onnx``."""
    written = [
        result.onnx,
        result.shrink.onnx if result.shrink is not None else None,
        result.channels.onnx if result.channels is not None else None,
    ]
    return {Path(path).name: Path(path) for path in written if path is not None}


def _measure_latency(
    job: _OnnxJob,
    cfg: PruneConfig,
    manifest: ComponentsManifest,
    files: dict[str, Path],
    modules: dict[str, nn.Module],
    request: LatencyRequest,
) -> LatencyManifest:
    """Time ``files`` against the run's dense checkpoint (``jobs/export_latency.py``).

    Raises:
        ExportError: the dense export or the measurement failed (the export's files are written already).
    """
    dense = load_model(Path(cfg.checkpoint), factory=cfg.factory, trust_pickle=cfg.trust_pickle).model.eval()
    try:
        return time_export(
            TaskOutputs(dense, manifest.output_paths).eval(),
            files,
            modules,
            job.names,
            manifest.input_shape,
            input_shape=request.input_shape,
            batch=request.batch,
            threads=request.threads,
            repeats=request.repeats,
            exporter=job.exporter,
            sparse_initializers=job.sparse_initializers,
        )
    except ExportError as exc:
        raise ExportError(
            f"timing the ONNX files failed ({exc}); the export files and manifest.json are written, without "
            "latency: pass --no-latency to skip the measurement"
        ) from exc


def _checked_input(shape: Sequence[int], latency: bool, writes_onnx: bool) -> tuple[int, ...]:
    """``--latency-input`` as a tuple, once it is positive integers and a latency is measured at all."""
    if isinstance(shape, str) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ConfigError(f"--latency-input {shape!r} must be positive whole numbers without the batch, e.g. 3x288x384")
    if not writes_onnx:
        raise ConfigError("--latency-input applies to the latency of ONNX files; add --onnx or --shrink")
    if not latency:
        raise ConfigError("--latency-input applies to the latency measurement, which --no-latency turns off")
    return tuple(shape)


def _check_rank(shape: Sequence[int], run_shape: Sequence[int]) -> None:
    """The timed input must have the run's rank and channels: only its spatial size may differ."""
    if len(shape) != len(run_shape) or shape[0] != run_shape[0]:
        want = "x".join(map(str, run_shape))
        raise ConfigError(
            f"--latency-input {'x'.join(map(str, shape))} does not fit this run's inputs ({want}): keep the "
            f"channels ({run_shape[0]}) and give every spatial size"
        )


def _safetensors_files(model: nn.Module, target: Path, narrow: torch.dtype | None) -> dict[str, Any]:
    """Write the dense and the sparse file, check the sparse one decodes to the dense weights; manifest fields."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dense_path = target / "model.safetensors"
    sparse_path = target / "model.sparse.safetensors"
    dense_bytes = save_dense(state, dense_path, metadata={"format": "pt", "producer": "adapmtl"})
    stats = save_sparse(state, sparse_path, values_dtype=narrow)
    check_sparse_roundtrip(state, sparse_path, values_dtype=narrow)
    return {
        "dense": str(dense_path),
        "dense_bytes": dense_bytes,
        "sparse": str(sparse_path),
        "sparse_bytes": stats.sparse_bytes,
        "sparse_values_dtype": stats.values_dtype,
        "zero_filters": {found.layer: len(found.zero) for found in zero_filters(model)},
    }


@dataclass(frozen=True)
class _OnnxJob:
    """What every ONNX file of one export shares: the reference model, inputs, output names and options."""

    reference: TaskOutputs
    example: torch.Tensor
    inputs: list[torch.Tensor]
    names: list[str]
    exporter: str
    sparse_initializers: bool

    @classmethod
    def of(cls, model: nn.Module, manifest: ComponentsManifest, exporter: str, sparse_initializers: bool) -> _OnnxJob:
        gen = torch.Generator().manual_seed(0)
        example = torch.rand(2, *manifest.input_shape, generator=gen)
        inputs = [torch.rand(b, *manifest.input_shape, generator=gen) for b in PARITY_BATCH_SIZES]
        reference = TaskOutputs(model, manifest.output_paths).eval()
        return cls(reference, example, inputs, list(manifest.output_paths), exporter, sparse_initializers)

    def write(self, module: nn.Module, path: Path) -> tuple[OnnxExport, OnnxParity]:
        """Export ``module`` to ``path`` once onnxruntime matches the pruned model (checked under a temp name)."""
        return export_verified_onnx(
            module,
            self.reference,
            self.example,
            self.inputs,
            path,
            self.names,
            exporter=self.exporter,
            sparse_initializers=self.sparse_initializers,
            atol=PARITY_ATOL,
        )


def _onnx_fields(job: _OnnxJob, target: Path) -> dict[str, Any]:
    """Write and check ``model.onnx``; its manifest fields."""
    written, parity = job.write(job.reference, target / "model.onnx")
    return {
        "onnx": str(written.path),
        "onnx_bytes": written.bytes,
        "onnx_max_abs_diff": parity.max_abs_diff,
        "onnx_batch_sizes": list(parity.batch_sizes),
        "onnx_exporter": job.exporter,
        "onnx_opset": written.opset,
        "onnx_parity": parity.per_output,
        "onnx_external_data": None if written.external_data is None else str(written.external_data),
        "onnx_sparse_initializers": written.sparse_initializers,
    }


def _shrink_fields(
    job: _OnnxJob, model: nn.Module, manifest: ComponentsManifest, target: Path, modules: dict[str, nn.Module]
) -> dict[str, Any]:
    """Shrink the model and, when channels went, write and check ``model.shrunk.onnx``; its manifest fields.

    The shrunk model is recorded in ``modules`` under its file name."""
    layers = {layer.name: layer.component for layer in manifest.layers}
    shrunk, report = shrink_model(model, job.inputs, components=layers)
    fields: dict[str, Any] = {}
    shrink_fields: dict[str, Any] = {}
    if report.removed:
        modules["model.shrunk.onnx"] = TaskOutputs(shrunk, manifest.output_paths).eval()
        written, parity = job.write(modules["model.shrunk.onnx"], target / "model.shrunk.onnx")
        fields["onnx_batch_sizes"] = list(parity.batch_sizes)
        shrink_fields = _onnx_entry(written, parity)
    fields["shrink"] = ShrinkManifest(
        status="shrunk" if report.removed else "nothing removed" if report.possible else "not possible",
        reason=report.reason,
        removed_channels=report.removed,
        params_before=report.params_before,
        params_after=report.params_after,
        flops_before=report.flops_before,
        flops_after=report.flops_after,
        max_abs_diff=report.max_abs_diff,
        **shrink_fields,
    )
    return fields


def _channel_fields(
    run: Path,
    job: _OnnxJob,
    model: nn.Module,
    cfg: PruneConfig,
    manifest: ComponentsManifest,
    target: Path,
    onnx: bool,
    modules: dict[str, nn.Module],
) -> dict[str, Any]:
    """A channel run: write the physically smaller model (weights, plan, with ``onnx`` its ONNX); else nothing.

    The smaller model is recorded in ``modules`` under its ONNX file's name."""
    rd = RunDir(run)
    if not rd.report.is_file():
        return {}
    report = read_model(rd.report, RunReport)
    if report.structure != "channel":
        return {}
    if report.channels is None:
        raise ExportError(f"the report of channel run {str(run)!r} lists no kept channels; run `adapmtl prune` again")
    smaller, fields = write_channel_model(
        model,
        report.channels.keep,
        manifest.input_shape,
        target,
        job.inputs,
        checkpoint=cfg.checkpoint,
        factory=cfg.factory,
    )
    if onnx:
        modules[ONNX_FILE] = TaskOutputs(smaller, manifest.output_paths).eval()
        written, parity = job.write(modules[ONNX_FILE], target / ONNX_FILE)
        fields |= _onnx_entry(written, parity)
    return {"channels": ChannelExport(**fields)}


def _onnx_entry(written: OnnxExport, parity: OnnxParity) -> dict[str, Any]:
    """The ONNX fields a derived model's manifest entry (``shrink``, ``channels``) records for its file."""
    return {
        "onnx": str(written.path),
        "onnx_bytes": written.bytes,
        "onnx_max_abs_diff": parity.max_abs_diff,
        "onnx_parity": parity.per_output,
    }


def _check_options(
    exporter: str,
    values_dtype: str | None,
    orphan_sparse_initializers: bool,
    timing: tuple[int | None, ...] = (),
    latency: bool = False,
    writes_onnx: bool = False,
) -> torch.dtype | None:
    """Validate the export options before anything is written; return the narrow values dtype, if any.

    ``timing`` is ``(latency_batch, latency_threads, latency_repeats)``, None where not given.
    """
    problems = []
    if exporter not in EXPORTERS:
        problems.append(f"--exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    if values_dtype is not None and values_dtype not in VALUES_DTYPES:
        problems.append(f"--values-dtype {values_dtype!r} is not one of {', '.join(VALUES_DTYPES)}")
    if orphan_sparse_initializers:
        problems.append("--sparse-initializers applies to ONNX files; add --onnx or --shrink")
    for flag, value in zip(("--latency-batch", "--latency-threads", "latency_repeats"), timing, strict=False):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{flag} {value!r} is not a positive integer")
        elif not writes_onnx:
            problems.append(f"{flag} applies to the latency of ONNX files; add --onnx or --shrink")
        elif not latency:
            problems.append(f"{flag} applies to the latency measurement, which --no-latency turns off")
    if problems:
        raise ConfigError("; ".join(problems))
    return None if values_dtype is None else VALUES_DTYPES[values_dtype]


def densify_file(sparse: Path, dest: Path, *, max_bytes: int | None = None) -> int:
    """Decode a sparse safetensors file (validated) into a plain dense one; returns its size in bytes.

    Args:
        max_bytes: the most bytes the file may decode to (default: ``load_sparse``'s cap, bounded by what the
            file stores).
    """
    if not Path(sparse).is_file():
        raise ConfigError(f"sparse file {str(sparse)!r} does not exist")
    state = load_sparse(Path(sparse), max_bytes=max_bytes)
    return save_dense(state, Path(dest), metadata={"format": "pt", "producer": "adapmtl"})

"""Turn a finished run into deployment files, each verified: dense and sparse safetensors, and ONNX.

The model is rebuilt the way ``prune`` built it (same checkpoint, ``--factory`` or trusted pickle), the baked
weights are loaded with ``strict=True``, and the output wrapper returns the task tensors in task order so the
ONNX outputs are named after the tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapmtl_cli.config import ComponentsManifest, ExportManifest, PruneConfig
from adapmtl_cli.errors import ConfigError, ExportError
from adapmtl_cli.export import check_onnx_parity, check_sparse_roundtrip, export_onnx, save_dense
from adapmtl_cli.loading import load_model, load_state_into
from adapmtl_cli.rundir import RunDir, read_model, write_model
from adapmtl_cli.sparse_codec import load_sparse, save_sparse


class TaskOutputs(nn.Module):
    """Wraps a model so forward returns ``tuple(task tensors)`` in a fixed task order (for ONNX)."""

    def __init__(self, model: nn.Module, paths: dict[str, list[Any]]) -> None:
        super().__init__()
        self.model = model
        self.paths = paths

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.model(x)
        out = []
        for path in self.paths.values():
            node = raw
            for key in path:
                node = node[key]
            out.append(node)
        return tuple(out)


def load_pruned_model(run: Path) -> tuple[nn.Module, PruneConfig, ComponentsManifest]:
    """The user's model class holding the run's baked (pruned) weights, in eval mode."""
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise ConfigError(f"run folder {str(run)!r} does not exist")
    cfg = read_model(rd.config, PruneConfig)
    manifest = read_model(rd.components, ComponentsManifest)
    if not rd.weights.is_file():
        raise ConfigError(
            f"run {str(run)!r} has no pruned weights yet; finish it with `adapmtl prune --resume --out {run}`"
        )
    from safetensors.torch import load_file

    loaded = load_model(Path(cfg.checkpoint), factory=cfg.factory, trust_pickle=cfg.trust_pickle)
    load_state_into(loaded.model, load_file(str(rd.weights)), repr(str(rd.weights)))
    return loaded.model.eval(), cfg, manifest


def export_run(
    run: Path, *, out_dir: Path | None = None, onnx: bool = False, exporter: str = "dynamo"
) -> ExportManifest:
    """Write and verify the export files of ``run``; returns (and saves) the export manifest."""
    if exporter not in ("dynamo", "legacy"):
        raise ConfigError(f"--exporter {exporter!r} is not one of dynamo, legacy")
    model, _cfg, manifest = load_pruned_model(run)
    target = Path(out_dir) if out_dir is not None else RunDir(run).export_dir
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dense_path = target / "model.safetensors"
    sparse_path = target / "model.sparse.safetensors"
    dense_bytes = save_dense(state, dense_path, metadata={"format": "pt", "producer": "adapmtl"})
    stats = save_sparse(state, sparse_path)
    check_sparse_roundtrip(state, sparse_path)
    fields: dict[str, Any] = {}
    if onnx:
        onnx_path = target / "model.onnx"
        wrapped = TaskOutputs(model, manifest.output_paths).eval()
        shape = manifest.input_shape
        gen = torch.Generator().manual_seed(0)
        example = torch.rand(2, *shape, generator=gen)
        names = list(manifest.output_paths)
        export_onnx(wrapped, example, onnx_path, names, exporter=exporter)
        inputs = [torch.rand(b, *shape, generator=gen) for b in (1, 3)]
        parity = check_onnx_parity(wrapped, onnx_path, inputs, names)
        if parity.max_abs_diff > 1e-4:
            raise ExportError(f"ONNX output differs from PyTorch by {parity.max_abs_diff:.2e} (> 1e-4)")
        fields = {
            "onnx": str(onnx_path),
            "onnx_bytes": onnx_path.stat().st_size,
            "onnx_max_abs_diff": parity.max_abs_diff,
            "onnx_batch_sizes": list(parity.batch_sizes),
        }
    result = ExportManifest(
        dense=str(dense_path),
        dense_bytes=dense_bytes,
        sparse=str(sparse_path),
        sparse_bytes=stats.sparse_bytes,
        sparse_roundtrip="bit-exact",
        **fields,
    )
    write_model(target / "manifest.json", result)
    return result


def densify_file(sparse: Path, dest: Path) -> int:
    """Decode a sparse safetensors file (validated) into a plain dense one; returns its size in bytes."""
    if not Path(sparse).is_file():
        raise ConfigError(f"sparse file {str(sparse)!r} does not exist")
    state = load_sparse(Path(sparse))
    return save_dense(state, Path(dest), metadata={"format": "pt", "producer": "adapmtl"})

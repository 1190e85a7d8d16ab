"""Export benchmark: file sizes of every deployment artefact, and what --shrink buys in onnxruntime.

    python benchmarks/export.py                       # the committed table: ~8 min on 2 shared CPU cores
    python benchmarks/export.py --models mobilenet_v2_tiny --sparsities 0.9 --out -   # quick look, stdout only

For each reference model (`adapmtl_cli.models`) and sparsity, the weights are pruned **directly by global
magnitude** over every conv and linear weight to exactly the target (this measures artefacts, not pruning
quality: no fine-tuning), BatchNorm statistics are measured on random images before pruning and BN betas drawn
at random (so a zero filter's constant after BN is rarely zero, as in a trained model), and the script writes,
through the same functions `adapmtl export` uses: dense and sparse safetensors (fp32 values, and fp16 values),
dense ONNX and ONNX with sparse initializers, the gzip (level 6) size of each, and the shrunk model's ONNX.
onnxruntime latency (CPU, one thread, fastest of `--runs`, the two models taking turns) compares the dense ONNX
with the shrunk one; every ONNX file is checked against PyTorch.
"""

from __future__ import annotations

import argparse
import gzip
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from adapmtl_cli.export.dense import save_dense
from adapmtl_cli.export.onnx import check_onnx_parity, export_onnx
from adapmtl_cli.export.onnx_storage import save_model, to_sparse_initializers_
from adapmtl_cli.export.shrink import shrink_model, zero_filters
from adapmtl_cli.export.sparse_codec import save_sparse
from adapmtl_cli.models import MODELS

HERE = Path(__file__).resolve().parent
# AdapMTL's two backbones at full size, and the tiny variants the tests and demo use (deeplab_resnet on request).
DEFAULT_MODELS = ("deeplab_resnet34", "mobilenet_v2", "deeplab_resnet_tiny", "mobilenet_v2_tiny")
DEFAULT_SPARSITIES = (0.0, 0.9, 0.95, 0.98)
TASKS = ("segmentation", "depth", "normal")


@dataclass(frozen=True)
class Row:
    model: str
    sparsity: float
    params: int
    dense_st: int
    sparse_st: int
    sparse_theory: int
    sparse_payload: int
    sparse_st_fp16: int
    dense_onnx: int
    sparse_onnx: int
    gz: dict[str, int]
    zero_filters: int
    removed: int
    params_after: int
    flops: int
    flops_after: int
    ms_dense: float
    ms_shrunk: float | None
    parity: float
    scale: float


class _Tuple(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        return tuple(out[name] for name in TASKS)


def pruned_models(name: str, sparsities: list[float], size: tuple[int, int]) -> Iterator[tuple[float, nn.Module]]:
    """The reference model, seeded, at each sparsity in turn, with BatchNorm statistics like a trained model's.

    Exactly ``round(sparsity * n)`` of the ``n`` conv and linear weights are zero: the smallest magnitudes, by
    rank (one sort per model), so ties cannot overshoot. BN affine parameters are drawn at random and the
    running statistics measured on random images once, on the dense weights, as in a trained model that is
    then pruned (activations stay O(1); a dead channel's constant after BN is ``beta - mean * gamma / std``,
    rarely zero). Statistics re-measured after pruning would blow near-dead channels up to unit variance and
    make the fp32 model itself chaotic. The same module is yielded each time, re-pruned.
    """
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
        model.train()
        model(torch.rand(8, 3, *size, generator=torch.Generator().manual_seed(1)))
        model.eval()
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    originals = [w.detach().clone() for w in weights]
    magnitudes = torch.cat([w.abs().flatten() for w in originals]).numpy()
    order = torch.from_numpy(np.argsort(magnitudes, kind="stable"))
    for sparsity in sparsities:
        keep = torch.ones(magnitudes.size, dtype=torch.bool)
        keep[order[: round(sparsity * magnitudes.size)]] = False
        start = 0
        with torch.no_grad():
            for weight, original in zip(weights, originals, strict=True):
                weight.copy_(original * keep[start : start + weight.numel()].view_as(weight))
                start += weight.numel()
        yield sparsity, model


def gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6, mtime=0))


def latencies_ms(paths: list[Path], x: Tensor, runs: int) -> list[float]:
    """Fastest of ``runs`` onnxruntime runs per model (CPU, one thread), the models taking turns.

    Taking turns exposes every model to the same background load; the minimum is the least disturbed run.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for path in paths]
    feeds = [{session.get_inputs()[0].name: x.numpy()} for session in sessions]
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(2):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for session, feed, spent in zip(sessions, feeds, times, strict=True):
            start = time.perf_counter()
            session.run(None, feed)
            spent.append((time.perf_counter() - start) * 1e3)
    return [min(spent) for spent in times]


def measure(name: str, sparsity: float, model: nn.Module, size: tuple[int, int], runs: int, work: Path) -> Row:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    files = {
        "dense_st": work / "model.safetensors",
        "sparse_st": work / "model.sparse.safetensors",
        "dense_onnx": work / "model.onnx",
        "sparse_onnx": work / "model.sparse-init.onnx",
    }
    save_dense(state, files["dense_st"])
    stats = save_sparse(state, files["sparse_st"])
    fp16 = save_sparse(state, work / "model.sparse-fp16.safetensors", values_dtype=torch.float16)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, *size, generator=gen)
    inputs = [torch.rand(b, 3, *size, generator=gen) for b in (1, 3)]  # batch 1 also times onnxruntime
    wrapped = _Tuple(model).eval()
    with torch.no_grad():
        scale = max(float(y.abs().max()) for x in inputs for y in wrapped(x))
    # Untrained heads reach |y| of 10-150, where PyTorch's own fp32 result is ~1e-5 * |y| off float64 (see the md).
    atol = max(1e-4, 1e-4 * scale)

    def parity_of(path: Path) -> float:
        return check_onnx_parity(wrapped, path, inputs, list(TASKS), atol=atol).max_abs_diff

    export_onnx(wrapped, example, files["dense_onnx"], list(TASKS))
    parity = parity_of(files["dense_onnx"])
    proto = onnx.load(str(files["dense_onnx"]))
    to_sparse_initializers_(proto)  # what --sparse-initializers does to the same export
    save_model(proto, files["sparse_onnx"], external=False)
    del proto
    parity = max(parity, parity_of(files["sparse_onnx"]))
    gz = {key: gzip_size(path) for key, path in files.items()}
    shrunk, report = shrink_model(model, inputs, atol=atol)
    ms_shrunk = None
    if report.removed:
        shrunk_path = work / "model.shrunk.onnx"
        export_onnx(_Tuple(shrunk).eval(), example, shrunk_path, list(TASKS))
        parity = max(parity, parity_of(shrunk_path))
        ms_dense, ms_shrunk = latencies_ms([files["dense_onnx"], shrunk_path], inputs[0], runs)
    else:
        (ms_dense,) = latencies_ms([files["dense_onnx"]], inputs[0], runs)
    return Row(
        model=name,
        sparsity=sparsity,
        params=report.params_before,
        dense_st=files["dense_st"].stat().st_size,
        sparse_st=stats.sparse_bytes,
        sparse_theory=stats.theoretical_bytes,
        sparse_payload=stats.payload_bytes,
        sparse_st_fp16=fp16.sparse_bytes,
        dense_onnx=files["dense_onnx"].stat().st_size,
        sparse_onnx=files["sparse_onnx"].stat().st_size,
        gz=gz,
        zero_filters=sum(len(z.zero) for z in zero_filters(model)),
        removed=sum(report.removed.values()),
        params_after=report.params_after,
        flops=report.flops_before,
        flops_after=report.flops_after,
        ms_dense=ms_dense,
        ms_shrunk=ms_shrunk,
        parity=parity,
        scale=scale,
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}" if n >= 1e6 else f"{n / 1e6:.3f}"


def _pct(n: int, of: int) -> str:
    return f"{100 * n / of:.1f}%"


def render(rows: list[Row], command: str, seconds: float, size: tuple[int, int], runs: int) -> str:
    lines = [
        "# Export benchmark",
        "",
        f"Command: `{command}` (wall time {seconds / 60:.1f} min; {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, onnxruntime {ort.__version__}).",
        "",
        "Models: `adapmtl_cli.models` reference models with seeded random weights, random BatchNorm affine "
        "parameters and BatchNorm statistics measured on random images before pruning (as a trained model's), "
        "pruned **directly by global magnitude** over every conv and linear weight to exactly the "
        "sparsity shown (no fine-tuning: this measures artefacts, not pruning quality). Every file is written by "
        "the functions `adapmtl export` uses; every ONNX file passed onnx.checker and onnxruntime parity "
        "against the unshrunk PyTorch model (max abs diff over all ONNX files of a row, and over the largest "
        "output |y|, in the last columns). These untrained heads output |y| up to ~150, where fp32 rounding "
        "alone moves outputs by more than 1e-4 (deeplab_resnet34 at 0%: PyTorch fp32 vs float64 1.3e-3 at "
        "|y| = 144; onnxruntime vs float64 1.3e-3), so the check here is max(1e-4, 1e-4 * max|y|); "
        "`adapmtl export` uses 1e-4 absolute.",
        "",
        "## Sizes (MB; % of the dense safetensors file)",
        "",
        "sparse st: `model.sparse.safetensors` with fp32 values. theory: the sum over tensors of the smallest of "
        "the dense, bitmask and indices payloads; `file/theory` is the whole file over it (header included: about "
        "110 bytes per tensor in format version 3), `chosen/theory` the payload the encoder chose over it. fp16: with "
        "`--values-dtype fp16`. sparse-init ONNX: `--sparse-initializers`. gz: `gzip -6` of the file.",
        "",
        "| model | sparsity | params | dense st | sparse st | file/theory | chosen/theory | sparse st fp16 | "
        "dense ONNX | sparse-init ONNX | gz dense st | gz sparse st | gz dense ONNX | gz sparse-init ONNX |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r.dense_st
        lines.append(
            f"| {r.model} | {r.sparsity:.0%} | {r.params / 1e6:.2f}M | {_mb(d)} | {_mb(r.sparse_st)} "
            f"({_pct(r.sparse_st, d)}) | {r.sparse_st / r.sparse_theory:.3f} | "
            f"{r.sparse_payload / r.sparse_theory:.4f} | {_mb(r.sparse_st_fp16)} "
            f"({_pct(r.sparse_st_fp16, d)}) | {_mb(r.dense_onnx)} | {_mb(r.sparse_onnx)} ({_pct(r.sparse_onnx, d)}) "
            f"| {_mb(r.gz['dense_st'])} ({_pct(r.gz['dense_st'], d)}) | {_mb(r.gz['sparse_st'])} "
            f"({_pct(r.gz['sparse_st'], d)}) | {_mb(r.gz['dense_onnx'])} ({_pct(r.gz['dense_onnx'], d)}) "
            f"| {_mb(r.gz['sparse_onnx'])} ({_pct(r.gz['sparse_onnx'], d)}) |"
        )
    lines += [
        "",
        f"## Shrink and onnxruntime latency (input 1x3x{size[0]}x{size[1]})",
        "",
        "zero filters: conv/linear output channels whose weights are all zero. removed: channels `--shrink` "
        "removed (zero filters whose constant after BN/ReLU is 0 or foldable, plus channels the next conv no "
        "longer reads). FLOPs: 2 x multiply-accumulates of conv and linear layers per image. Latency: "
        f"onnxruntime CPU, 1 thread, fastest of {runs} runs with dense and shrunk ONNX taking turns (the machine "
        "was shared with other jobs; `-`: nothing removed).",
        "",
        "| model | sparsity | zero filters | removed | params after | GFLOPs | GFLOPs after | ms dense | "
        "ms shrunk | speed-up | max abs diff | max\\|y\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shrunk = "-" if r.ms_shrunk is None else f"{r.ms_shrunk:.3g}"
        speedup = "-" if r.ms_shrunk is None else f"{r.ms_dense / r.ms_shrunk:.2f}x"
        lines.append(
            f"| {r.model} | {r.sparsity:.0%} | {r.zero_filters} | {r.removed} | "
            f"{r.params_after / 1e6:.2f}M ({_pct(r.params_after, r.params)}) | {r.flops / 1e9:.3f} | "
            f"{r.flops_after / 1e9:.3f} ({_pct(r.flops_after, r.flops)}) | {r.ms_dense:.3g} | {shrunk} | {speedup} "
            f"| {r.parity:.1e} | {r.scale:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated names from MODELS")
    parser.add_argument("--sparsities", default=",".join(str(s) for s in DEFAULT_SPARSITIES))
    parser.add_argument("--size", default="64,80", help="input H,W for export, parity, shrink and latency")
    parser.add_argument("--runs", type=int, default=20, help="timed onnxruntime runs per model")
    parser.add_argument("--out", default=str(HERE / "results" / "export.md"), help="Markdown file, or - for none")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    size = tuple(int(v) for v in args.size.split(","))
    assert len(size) == 2
    command = "python benchmarks/export.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    start = time.perf_counter()
    rows = []
    for name in models:
        for sparsity, model in pruned_models(name, sparsities, size):  # type: ignore[arg-type]
            with tempfile.TemporaryDirectory() as work:
                t0 = time.perf_counter()
                row = measure(name, sparsity, model, size, args.runs, Path(work))  # type: ignore[arg-type]
                rows.append(row)
                print(
                    f"{name} {sparsity:.0%}: sparse {_pct(row.sparse_st, row.dense_st)} of dense, "
                    f"removed {row.removed}, {time.perf_counter() - t0:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
    text = render(rows, command, time.perf_counter() - start, size, args.runs)  # type: ignore[arg-type]
    print(text)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()

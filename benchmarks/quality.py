"""Quality benchmark: every pruning method, same data and step budget, on dense reference checkpoints.

    python benchmarks/quality.py --quick          # smoke test, a few minutes on 2 CPU cores
    python benchmarks/quality.py                  # the full table (up to an hour on 2 CPU cores)

Trains (and caches under benchmarks/.cache/) a dense checkpoint per benchmark on generated data, prunes it with
every method at each sparsity and seed through the same `run_prune` the CLI uses, and writes
`benchmarks/results/quality{,-quick}.{md,json}`: per method and sparsity, Δ_T mean ± spread over seeds,
per-task metrics (mean over seeds), per-component sparsity and wall time. Rows of the JSON:
{"benchmark", "method", "sparsity", "delta_t", "delta_t_spread", "seeds", "components", "tasks", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from adapmtl_cli.config import RunReport, make_prune_config
from adapmtl_cli.data.synth.scenes import generate_scenes
from adapmtl_cli.files.atomic import save_torch
from adapmtl_cli.jobs.demo import train_dense
from adapmtl_cli.jobs.prune import run_prune
from adapmtl_cli.methods import METHODS
from adapmtl_cli.models import MODELS

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    factory: str
    size: tuple[int, int]
    data_seed: int
    train: int
    val: int
    dense_steps: int


BENCHES = (
    Bench("deeplab_resnet_tiny/nyu-like", "deeplab_resnet_tiny", (72, 96), 0, 256, 64, 1500),
    Bench("mobilenet_v2_tiny/nyu-like-b", "mobilenet_v2_tiny", (64, 80), 7, 256, 64, 1500),
)

# (label, method, option overrides): the default, its ablations, then the baselines.
VARIANTS: list[tuple[str, str, dict[str, str]]] = [
    ("adapmtl", "adapmtl", {}),
    ("adapmtl+paper", "adapmtl", {"weighting": "paper"}),
    ("adapmtl+equal", "adapmtl", {"weighting": "equal"}),
    ("adapmtl-noscale", "adapmtl", {"layer_scale": "none"}),
] + [(m, m, {}) for m in METHODS if m != "adapmtl"]
REFERENCE = "adapmtl-noscale"
"""The paper's raw per-component thresholds (with our weighting): the form the default improves on. Shown next to
the verdict, not part of it (the verdict is against the baselines and the weighting ablations)."""


def dense_checkpoint(bench: Bench, cache: Path) -> tuple[Path, Path]:
    """Generate the data and train the dense model once; later runs reuse both."""
    root = cache / bench.name.replace("/", "__")
    scenes, ckpt = root / "scenes", root / "model.pt"
    if not (root / "ready").is_file():
        print(f"[{bench.name}] generating data and training the dense model ({bench.dense_steps} steps)", flush=True)
        generate_scenes(scenes, train=bench.train, val=bench.val, size=bench.size, seed=bench.data_seed, overwrite=True)
        model = train_dense(scenes, bench.dense_steps, build=MODELS[bench.factory])
        save_torch(ckpt, model.state_dict())
        (root / "ready").write_text("ok\n")
    return ckpt, scenes


def run_one(
    bench: Bench,
    ckpt: Path,
    scenes: Path,
    method: str,
    overrides: dict[str, str],
    sparsity: float,
    seed: int,
    steps: int,
    out: Path,
) -> tuple[RunReport, float]:
    cfg = make_prune_config(
        checkpoint=str(ckpt),
        factory=f"adapmtl_cli.models:{bench.factory}",
        data="synthetic",
        data_dir=str(scenes),
        method=method,
        sparsity=sparsity,
        steps=steps,
        lr=5e-4,
        seed=seed,
        device="cpu",
        out=str(out),
        save_every=steps,
        log_every=max(1, steps // 10),
        **overrides,
    )
    t0 = time.perf_counter()
    report = run_prune(cfg, overwrite=out.exists())
    return report, time.perf_counter() - t0


def _one_thread() -> None:
    torch.set_num_threads(1)


def _run_cell(cell: tuple) -> tuple[str, float]:
    """One (benchmark, variant, sparsity, seed) run; the report as JSON (it crosses process boundaries)."""
    bench, label, method, overrides, sparsity, seed, steps, cache, ckpt, scenes = cell
    out = cache / "runs" / bench.name.replace("/", "__") / f"{label}-{sparsity}-{seed}"
    report, seconds = run_one(bench, ckpt, scenes, method, overrides, sparsity, seed, steps, out)
    return report.model_dump_json(), seconds


def _mean_metrics(reports: list[RunReport]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task, tm in reports[0].tasks.items():
        out[task] = {m: statistics.fmean(r.tasks[task].pruned[m] for r in reports) for m in tm.pruned}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one benchmark, 90%% only, one seed, 60 steps")
    ap.add_argument("--steps", type=int, default=None, help="fine-tune steps per run (default 300; quick 60)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 2; quick 1)")
    ap.add_argument(
        "--sparsities", type=str, default=None, help="comma-separated, e.g. 0.9,0.95 (default 0.9,0.95,0.98)"
    )
    ap.add_argument("--benchmarks", type=int, default=None, help="only the first N benchmarks")
    ap.add_argument("--tag", type=str, default=None, help="write quality-TAG.{md,json} (partial runs)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, one torch thread each (default 1)")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    benches = BENCHES[: args.benchmarks or (1 if args.quick else len(BENCHES))]
    if args.sparsities:
        sparsities = tuple(float(v) for v in args.sparsities.split(","))
    else:
        sparsities = (0.9,) if args.quick else (0.9, 0.95, 0.98)
    steps = args.steps or (60 if args.quick else 300)
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    rows: list[dict] = []
    started = time.perf_counter()
    checkpoints = {bench.name: dense_checkpoint(bench, args.cache) for bench in benches}
    cells = [
        (bench, label, method, overrides, sparsity, seed, steps, args.cache, *checkpoints[bench.name])
        for bench in benches
        for sparsity in sparsities
        for label, method, overrides in VARIANTS
        for seed in seeds
    ]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("fork"), initializer=_one_thread) as pool:
            done = list(pool.map(_run_cell, cells))
    else:
        done = [_run_cell(cell) for cell in cells]
    results = {(c[0].name, c[1], c[4], c[5]): r for c, r in zip(cells, done, strict=True)}
    for bench in benches:
        dense: dict[str, dict[str, float]] | None = None
        for sparsity in sparsities:
            for label, _, _ in VARIANTS:
                reports = [RunReport.model_validate_json(results[bench.name, label, sparsity, s][0]) for s in seeds]
                seconds = [results[bench.name, label, sparsity, s][1] for s in seeds]
                dense = {t: tm.dense for t, tm in reports[0].tasks.items()}
                dts = [r.delta_t.overall for r in reports]
                row = {
                    "benchmark": bench.name,
                    "method": label,
                    "sparsity": sparsity,
                    "delta_t": statistics.fmean(dts),
                    "delta_t_spread": (max(dts) - min(dts)) / 2,
                    "seeds": len(seeds),
                    "achieved": statistics.fmean(r.overall_sparsity for r in reports),
                    "components": {
                        c.name: statistics.fmean(
                            next(x.sparsity for x in r.components if x.name == c.name) for r in reports
                        )
                        for c in reports[0].components
                    },
                    "tasks": _mean_metrics(reports),
                    "seconds": statistics.fmean(seconds),
                }
                rows.append(row)
                print(
                    f"[{bench.name}] {label:18s} {sparsity:.2f}  Δ_T {row['delta_t']:+7.2f} ± "
                    f"{row['delta_t_spread']:.2f}  ({row['seconds']:.0f} s/run)",
                    flush=True,
                )
        rows.append({"benchmark": bench.name, "method": "dense", "tasks": dense})
    suffix = f"-{args.tag}" if args.tag else ("-quick" if args.quick else "")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"quality{suffix}.json").write_text(json.dumps(rows, indent=2) + "\n")
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.results / f"quality{suffix}.md").write_text(
        render_markdown(rows, command, steps, time.perf_counter() - started)
    )
    print(f"wrote {args.results / f'quality{suffix}.md'}")
    return 0


def render_markdown(rows: list[dict], command: str, steps: int, seconds: float) -> str:
    lines = [
        "# Quality benchmark",
        "",
        f"Command: `{command}` ({steps} fine-tune steps per run, same data, budget and learning rate for every "
        f"method; wall time {seconds / 60:.1f} min on this machine).",
        "",
        "Δ_T: AdapMTL paper convention — per task the sum over its metrics of ±(pruned − dense)/dense × 100, mean "
        "over tasks; higher is better; ± is half the range over seeds. Dense checkpoints: reference models trained "
        "on generated NYU-like scenes (see the script).",
        "",
    ]
    lines += [
        "## The default against the best alternative",
        "",
        "Per benchmark and sparsity: `adapmtl` (the default) and the best other row (baselines and the weighting "
        "ablations). Verdict: win / tie / loss, a tie when the difference is within the larger of the two ± "
        f"spreads. Last column: `{REFERENCE}`, the paper's raw per-component thresholds (the default before "
        "layer scales), for reference.",
        "",
        f"| benchmark | sparsity | adapmtl Δ_T | best alternative | its Δ_T | verdict | {REFERENCE} Δ_T |",
        "|---|---|---|---|---|---|---|",
    ]
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        for sparsity in dict.fromkeys(r["sparsity"] for r in rows if r["benchmark"] == bench and "sparsity" in r):
            cell = [r for r in rows if r["benchmark"] == bench and r.get("sparsity") == sparsity]
            ours = next(r for r in cell if r["method"] == "adapmtl")
            best = max((r for r in cell if r["method"] not in ("adapmtl", REFERENCE)), key=lambda r: r["delta_t"])
            ref = next(
                (f"{r['delta_t']:+.2f} ± {r['delta_t_spread']:.2f}" for r in cell if r["method"] == REFERENCE), ""
            )

            margin = max(ours["delta_t_spread"], best["delta_t_spread"])
            diff = ours["delta_t"] - best["delta_t"]
            verdict = "tie" if abs(diff) <= margin else ("win" if diff > 0 else "loss")
            lines.append(
                f"| {bench} | {sparsity:.2f} | {ours['delta_t']:+.2f} ± {ours['delta_t_spread']:.2f} | "
                f"{best['method']} | {best['delta_t']:+.2f} ± {best['delta_t_spread']:.2f} | {verdict} | {ref} |"
            )
    lines.append("")
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        brows = [r for r in rows if r["benchmark"] == bench and r["method"] != "dense"]
        dense = next(r for r in rows if r["benchmark"] == bench and r["method"] == "dense")["tasks"]
        comps = list(brows[0]["components"])
        metrics = [(t, m) for t, ms in brows[0]["tasks"].items() for m in ms]
        lines += [f"## {bench}", ""]
        head = ["method", "sparsity", "Δ_T", *comps, *(f"{t[:3]}.{m}" for t, m in metrics), "s/run"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines.append(
            "| dense | 0 | 0 | "
            + " | ".join("" for _ in comps)
            + " | "
            + " | ".join(f"{dense[t][m]:.4f}" for t, m in metrics)
            + " | |"
        )
        for r in brows:
            cells = [
                r["method"],
                f"{r['sparsity']:.2f}",
                f"{r['delta_t']:+.2f} ± {r['delta_t_spread']:.2f}",
                *(f"{r['components'][c]:.1%}" for c in comps),
                *(f"{r['tasks'][t][m]:.4f}" for t, m in metrics),
                f"{r['seconds']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

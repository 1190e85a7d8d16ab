"""What a pruned model costs to run (issue #14): onnxruntime latency, parameters, FLOPs and quality.

For the head-heavy reference model of the quality benchmark (``mobilenet_aspp_tiny``, its dense checkpoint and
generated scenes, ``benchmarks/quality.py``), at 30 / 50 / 70% channel sparsity:

- ``adapmtl --structure channel`` (the product: one learned threshold per component on channel norms),
- ``tp_magnitude`` (Torch-Pruning's group-magnitude channel pruning, the same fraction of every group),
- ``adapmtl`` unstructured at the same fraction of *weights*, then ``export --shrink`` (what a user of the
  weight mode gets: zeros, and whatever channels died).

Every cell prunes with the same budget (steps, lr, batch, seed) through ``adapmtl prune``, scores on the test
split, exports with ``--onnx`` (and ``--shrink`` for the weight rows) and times every ONNX file against the
dense model in one interleaved onnxruntime loop (``export/latency.py``: batch 1 and 8, one thread, median of
20 after warm-up). The ratio reported is dense time / file time (> 1 = faster), from the file a deployment
would ship: ``model.channels.onnx`` for channel runs, ``model.shrunk.onnx`` (else ``model.onnx``) for weight
runs. Cells are cached by their settings (``benchmarks/.cache/deploy``), so the run resumes; latency is measured
where the cell runs, so a loaded machine makes the absolute times noisy (the ratios are side by side).

    python benchmarks/deploy.py            # run / resume -> benchmarks/results/deploy.{json,md}
    python benchmarks/deploy.py --render   # rewrite deploy.md from deploy.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ROWS: dict[str, dict[str, Any]] = {
    "adapmtl --structure channel": {"method": "adapmtl", "structure": "channel"},
    "tp_magnitude": {"method": "tp_magnitude"},
    "adapmtl (weights) + --shrink": {"method": "adapmtl"},
}
SPARSITIES = (0.3, 0.5, 0.7)
SEEDS = (0, 1)
STEPS, LR, THREADS, VERSION = 200, 5e-4, 1, 1


def _key(row: str, sparsity: float, seed: int) -> str:
    blob = json.dumps([VERSION, ROWS[row], sparsity, seed, STEPS, LR], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cell(row: str, sparsity: float, seed: int, scenes: Path, dense: Path, work: Path) -> dict[str, Any]:
    import torch

    from adapmtl_cli.config import make_prune_config
    from adapmtl_cli.jobs.export import export_run
    from adapmtl_cli.jobs.prune import run_prune

    torch.set_num_threads(THREADS)
    options = dict(ROWS[row])
    weight_row = options.get("structure") is None and options["method"] != "tp_magnitude"
    out = work / _key(row, sparsity, seed)
    shutil.rmtree(out, ignore_errors=True)
    cfg = make_prune_config(
        checkpoint=str(dense / "model.pt"),
        factory="adapmtl_cli.models:mobilenet_aspp_tiny",
        data="synthetic",
        data_dir=str(scenes),
        sparsity=sparsity,
        steps=STEPS,
        lr=LR,
        seed=seed,
        device="cpu",
        batch_size=8,
        eval_split="test",
        out=str(out),
        save_every=STEPS,
        log_every=max(1, STEPS // 10),
        **options,
    )
    try:
        report = run_prune(cfg)
        manifest = export_run(out, onnx=True, shrink=weight_row, latency=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    lat = manifest.latency
    assert lat is not None
    if manifest.channels is not None:
        shipped, params, flops = "model.channels.onnx", manifest.channels.params_after, manifest.channels.flops_after
        params0, flops0 = manifest.channels.params_before, manifest.channels.flops_before
    elif manifest.shrink is not None and manifest.shrink.onnx:
        shipped, params, flops = "model.shrunk.onnx", manifest.shrink.params_after, manifest.shrink.flops_after
        params0, flops0 = manifest.shrink.params_before, manifest.shrink.flops_before
    else:
        assert manifest.shrink is not None
        shipped, params, flops = "model.onnx", manifest.shrink.params_before, manifest.shrink.flops_before
        params0, flops0 = params, flops
    bounded = report.scores.get("delta_t_bounded")
    return {
        "row": row,
        "sparsity": sparsity,
        "seed": seed,
        "delta_t": report.delta_t.overall,
        "score_bounded": bounded.overall if bounded is not None else report.delta_t.overall,
        "collapsed": report.collapsed,
        "weights_zero": report.overall_sparsity,
        "channels_removed": report.channels.achieved if report.channels is not None else None,
        "file": shipped,
        "params_before": params0,
        "params_after": params,
        "flops_before": flops0,
        "flops_after": flops,
        "speedup_b1": lat.batch1.dense_ms / lat.batch1.files[shipped] if lat.batch1 else math.nan,
        "speedup_b8": lat.dense_ms / lat.files[shipped],
        "latency": lat.model_dump(),
    }


def _work(item: tuple[str, float, int, str, str, str, str]) -> dict[str, Any]:
    row, sparsity, seed, scenes, dense, work, cache = item
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    result = _cell(row, sparsity, seed, Path(scenes), Path(dense), Path(work))
    path = Path(cache) / f"{_key(row, sparsity, seed)}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _mean_ci(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    from quality_stats import interval

    ci = interval(values)
    return f"{mean:.2f} [{ci.low:.2f}, {ci.high:.2f}]"


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Deployment benchmark (issue #14)",
        "",
        "Generated by `python benchmarks/deploy.py` from `deploy.json`. Model: `mobilenet_aspp_tiny` (the quality",
        f"benchmark's dense checkpoint, seed 0, 48×64 input), {STEPS} fine-tune steps at lr {LR}, test split,",
        f"seeds {', '.join(map(str, SEEDS))}. Speed-up = dense ms / shipped file ms in onnxruntime (CPU, 1 thread,",
        "interleaved, median of 20); > 1 is faster. The sparsity column is the fraction of channels for the channel",
        "rows and of weights for the weight row. Mean over seeds with a 95% Student-t interval where 2+ seeds ran.",
        "",
        "| row | sparsity | file | Δ_T | bounded | params after / before | FLOPs after / before | speed-up b1 "
        "| speed-up b8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        for sp in SPARSITIES:
            cells = [r for r in results if r["row"] == row and r["sparsity"] == sp]
            if not cells:
                lines.append(f"| {row} | {sp:.0%} | (not run) | | | | | | |")
                continue
            c0 = cells[0]
            lines.append(
                f"| {row} | {sp:.0%} | `{c0['file']}` | {_mean_ci([c['delta_t'] for c in cells])} | "
                f"{_mean_ci([c['score_bounded'] for c in cells])} | "
                f"{statistics.fmean(c['params_after'] / c['params_before'] for c in cells):.1%} | "
                f"{statistics.fmean(c['flops_after'] / c['flops_before'] for c in cells):.1%} | "
                f"{_mean_ci([c['speedup_b1'] for c in cells])}× | {_mean_ci([c['speedup_b8'] for c in cells])}× |"
            )
    done = len(results)
    total = len(ROWS) * len(SPARSITIES) * len(SEEDS)
    if done < total:
        lines += ["", f"**Partial**: {done} of {total} cells; `python benchmarks/deploy.py` resumes."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render", action="store_true", help="rewrite deploy.md from deploy.json and stop")
    ap.add_argument("--jobs", type=int, default=1, help="cells in parallel (latency is then measured under load)")
    ap.add_argument("--seeds", help="comma-separated seeds (default 0,1)")
    args = ap.parse_args(argv)
    results_json = HERE / "results" / "deploy.json"
    if args.render:
        results = json.loads(results_json.read_text())["runs"]
        (HERE / "results" / "deploy.md").write_text(render(results))
        return 0
    import quality

    paths = quality.Paths(HERE / ".cache" / "quality", HERE / "results")
    bench = quality.BENCHES["aspp"]
    scenes = quality.ensure_data(bench, paths)
    dense = quality.ensure_dense(bench, 0, paths)
    cache = HERE / ".cache" / "deploy"
    work = cache / "runs"
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(SEEDS)
    todo, results = [], []
    # The acceptance's 50% first, every row before the next seed: a partial run compares like with like.
    order = sorted(SPARSITIES, key=lambda sp: (sp != 0.5, sp))
    for seed in seeds:
        for sp in order:
            for row in ROWS:
                path = cache / f"{_key(row, sp, seed)}.json"
                if path.is_file():
                    results.append(json.loads(path.read_text()))
                else:
                    todo.append((row, sp, seed, str(scenes), str(dense), str(work), str(cache)))
    print(f"{len(results)} cells cached, {len(todo)} to run", flush=True)

    def save() -> None:
        results_json.write_text(json.dumps({"version": VERSION, "runs": results}, indent=1) + "\n")
        (HERE / "results" / "deploy.md").write_text(render(results))

    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for r in pool.imap_unordered(_work, todo):
                results.append(r)
                print(f"{r['row']} {r['sparsity']} seed {r['seed']}: Δ_T {r['delta_t']:.2f}, b1 {r['speedup_b1']:.2f}×")
                save()
    else:
        for item in todo:
            r = _work(item)
            results.append(r)
            print(f"{r['row']} {r['sparsity']} seed {r['seed']}: Δ_T {r['delta_t']:.2f}, b1 {r['speedup_b1']:.2f}×")
            save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a pruned model costs to run (issue #14): onnxruntime latency, parameters, FLOPs and quality.

For the reference models of the quality benchmark (``--bench``: ``aspp`` = ``mobilenet_aspp_tiny``, the
head-heavy default; ``resnet`` = ``deeplab_resnet_tiny``, residual; ``mobilenet`` = ``mobilenet_v2_tiny``,
depthwise and inverted residuals; each with its dense checkpoint of seed 0 and generated scenes,
``benchmarks/quality.py``), at 30 / 50 / 70% channel sparsity:

- ``adapmtl --structure channel`` (the product: one learned threshold per component on channel norms),
- ``tp_magnitude`` (Torch-Pruning's group-magnitude channel pruning, the same fraction of every group),
- ``tp_taylor`` (Torch-Pruning's group-Taylor importance, same recipe),
- ``adapmtl`` unstructured at the same fraction of *weights*, then ``export --shrink`` (what a user of the
  weight mode gets: zeros, and whatever channels died).

Every cell prunes with the same budget (steps, lr, batch, seed) through ``adapmtl prune``, scores on the test
split, exports with ``--onnx`` (and ``--shrink`` for the weight rows) and times every ONNX file against the
dense model in one interleaved onnxruntime loop (``export/latency.py``: batch 1 and 8, one thread, median of
20 after warm-up). The ratio reported is dense time / file time (> 1 = faster), from the file a deployment
would ship: ``model.channels.onnx`` for channel runs, ``model.shrunk.onnx`` (else ``model.onnx``) for weight
runs. Cells are cached by their settings (``benchmarks/.cache/deploy``), and a fresh checkout takes the cells of
the committed ``deploy.json`` whose dense checkpoint has the same fingerprint (``committed.dense_fingerprint``),
so the run resumes; latency is measured where the cell runs, so a loaded machine makes the absolute times noisy
(the ratios are side by side).

    python benchmarks/deploy.py                          # run / resume -> benchmarks/results/deploy.{json,md}
    python benchmarks/deploy.py --bench resnet --sparsities 0.5
    python benchmarks/deploy.py --render                 # rewrite deploy.md from deploy.json
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
    "tp_taylor": {"method": "tp_taylor"},
    "adapmtl (weights) + --shrink": {"method": "adapmtl"},
}
SPARSITIES = (0.3, 0.5, 0.7)
SEEDS = (0, 1)
STEPS, LR, THREADS, VERSION = 200, 5e-4, 1, 4
"""VERSION 3 (session 9): channel runs compare thresholds with rank scores in chunks of ``KEEP_MULTIPLE``; the
version-1 cells (another machine's dense checkpoints) are kept in ``results/deploy-s8.{json,md}``. VERSION 4
(session 11): the same cells, also timed at ``DEPLOY_INPUT``."""
DEPLOY_INPUT = (3, 288, 384)
"""The second input size every cell is timed at (``export --latency-input``): NYU-v2 at the MTAN / LibMTL
resolution. At the benchmarks' 48×64 a whole forward pass takes 0.2-1.7 ms and per-operator overhead hides much
of what fewer channels save."""


DEFAULT_BENCH = "mobilenet_aspp_tiny"


ROW_REVISIONS: dict[str, dict[str, Any]] = {
    "adapmtl --structure channel": {"rank_by": "norm*taylor"},
    "tp_magnitude": {"keep_multiple": 4, "rounding": "spread"},
    "tp_taylor": {"keep_multiple": 4, "rounding": "spread"},
}
"""Code changes that re-run one row's cells only: since session 11 the Torch-Pruning rows keep multiples of
``KEEP_MULTIPLE`` channels in groups of 8+ as ours do (Torch-Pruning's ``round_to``; their uneven counts at 30%
ran slower than dense, 0.60×); since session 12 the rounding moves spread over the groups (they used to pile onto
the first groups of equal moves, a 48-channel group losing 44 at 50%, and the no-going-back floors kept them);
``adapmtl --structure channel`` ranks channels by norm × Taylor score since session 12 (``channel_pruner.RANK_BY``)."""


def _key(row: str, sparsity: float, seed: int, bench: str = DEFAULT_BENCH) -> str:
    settings: list[Any] = [VERSION, ROWS[row], sparsity, seed, STEPS, LR]
    if bench != DEFAULT_BENCH:  # the first benchmark's keys predate the option and stay as they were
        settings.append(bench)
    if row in ROW_REVISIONS:
        settings.append(ROW_REVISIONS[row])
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _bench_of(record: dict[str, Any]) -> str:
    return str(record.get("benchmark", DEFAULT_BENCH))


def _cell(row: str, sparsity: float, seed: int, bench: str, scenes: Path, dense: Path, work: Path) -> dict[str, Any]:
    import torch

    from adapmtl_cli.config import make_prune_config
    from adapmtl_cli.jobs.export import export_run
    from adapmtl_cli.jobs.prune import run_prune
    from adapmtl_cli.methods import structure_name

    torch.set_num_threads(THREADS)
    options = dict(ROWS[row])
    weight_row = structure_name(options["method"], options.get("structure")) == "weight"
    out = work / _key(row, sparsity, seed, bench)
    shutil.rmtree(out, ignore_errors=True)
    cfg = make_prune_config(
        checkpoint=str(dense / "model.pt"),
        factory=f"adapmtl_cli.models:{bench}",
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
        deployed = export_run(
            out, out_dir=out / "deploy-size", onnx=True, shrink=weight_row, latency=True, latency_input=DEPLOY_INPUT
        ).latency
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
    from committed import dense_fingerprint

    return {
        "benchmark": bench,
        "key": _key(row, sparsity, seed, bench),
        "dense_fingerprint": dense_fingerprint(dense / "model.pt"),
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
        "speedup_b1_deploy": deployed.batch1.dense_ms / deployed.batch1.files[shipped] if deployed else math.nan,
        "speedup_b8_deploy": deployed.dense_ms / deployed.files[shipped] if deployed else math.nan,
        "latency_deploy": deployed.model_dump() if deployed else None,
    }


def _work(item: tuple[str, float, int, str, str, str, str, str]) -> dict[str, Any]:
    row, sparsity, seed, bench, scenes, dense, work, cache = item
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    try:
        result = _cell(row, sparsity, seed, bench, Path(scenes), Path(dense), Path(work))
    except Exception as exc:  # one failed cell (an export's parity, say) must not end the others
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"row": row, "sparsity": sparsity, "seed": seed, "error": f"{type(exc).__name__}: {first}"}
    path = Path(cache) / f"{_key(row, sparsity, seed, bench)}.json"
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


def _table(results: list[dict[str, Any]]) -> list[str]:
    deploy = "×".join(map(str, DEPLOY_INPUT[1:]))
    lines = [
        "| row | sparsity | file | Δ_T | bounded | params after / before | FLOPs after / before | speed-up b1 "
        f"| speed-up b8 | speed-up b1 at {deploy} | speed-up b8 at {deploy} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        for sp in SPARSITIES:
            cells = [r for r in results if r["row"] == row and r["sparsity"] == sp]
            if not cells:
                lines.append(f"| {row} | {sp:.0%} | (not run) | | | | | | | | |")
                continue
            c0 = cells[0]
            lines.append(
                f"| {row} | {sp:.0%} | `{c0['file']}` | {_mean_ci([c['delta_t'] for c in cells])} | "
                f"{_mean_ci([c['score_bounded'] for c in cells])} | "
                f"{statistics.fmean(c['params_after'] / c['params_before'] for c in cells):.1%} | "
                f"{statistics.fmean(c['flops_after'] / c['flops_before'] for c in cells):.1%} | "
                f"{_mean_ci([c['speedup_b1'] for c in cells])}× | {_mean_ci([c['speedup_b8'] for c in cells])}× | "
                f"{_mean_ci([c['speedup_b1_deploy'] for c in cells])}× | "
                f"{_mean_ci([c['speedup_b8_deploy'] for c in cells])}× |"
            )
    return lines


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Deployment benchmark (issue #14)",
        "",
        "Generated by `python benchmarks/deploy.py` from `deploy.json`. Each model: the quality benchmark's dense",
        f"checkpoint (seed 0, 48×64 input), {STEPS} fine-tune steps at lr {LR}, test split, seeds",
        f"{', '.join(map(str, SEEDS))}. Speed-up = dense ms / shipped file ms in onnxruntime (CPU, 1 thread,",
        "interleaved, median of 20); > 1 is faster. The sparsity column is the fraction of channels for the channel",
        "rows and of weights for the weight row. Mean over seeds with a 95% Student-t interval where 2+ seeds ran.",
        f"The last two columns time the same models re-exported at {'×'.join(map(str, DEPLOY_INPUT[1:]))} (NYU-v2",
        "at the MTAN / LibMTL resolution; `export --latency-input`), where per-operator overhead weighs less.",
    ]
    benches = sorted({_bench_of(r) for r in results}, key=lambda b: (b != DEFAULT_BENCH, b)) or [DEFAULT_BENCH]
    total = 0
    for bench in benches:
        mine = [r for r in results if _bench_of(r) == bench]
        lines += ["", f"## `{bench}`", "", *_table(mine)]
        total += len(ROWS) * len(SPARSITIES) * len(SEEDS)
    if len(results) < total:
        lines += ["", f"**Partial**: {len(results)} of {total} cells; `python benchmarks/deploy.py` resumes."]
    return "\n".join(lines) + "\n"


def committed_cells(results_json: Path, bench: str, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Key → record of the committed ``deploy.json`` for ``bench`` whose dense checkpoint is the local one."""
    if not results_json.is_file():
        return {}
    out = {}
    for r in json.loads(results_json.read_text()).get("runs", []):
        current = r.get("key") == _key(r["row"], r["sparsity"], r["seed"], bench)  # this VERSION's settings
        if _bench_of(r) == bench and r.get("dense_fingerprint") == fingerprint and current:
            out[r["key"]] = r
    return out


def main(argv: list[str] | None = None) -> int:
    import quality

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render", action="store_true", help="rewrite deploy.md from deploy.json and stop")
    ap.add_argument("--bench", choices=tuple(quality.BENCHES), default="aspp", help="reference model")
    ap.add_argument("--jobs", type=int, default=1, help="cells in parallel (latency is then measured under load)")
    ap.add_argument("--seeds", help="comma-separated seeds (default 0,1)")
    ap.add_argument("--sparsities", help="comma-separated channel sparsities (default 0.3,0.5,0.7)")
    ap.add_argument("--rows", help=f"comma-separated rows (default all: {', '.join(ROWS)})")
    args = ap.parse_args(argv)
    results_json = HERE / "results" / "deploy.json"
    if args.render:
        results = json.loads(results_json.read_text())["runs"]
        (HERE / "results" / "deploy.md").write_text(render(results))
        return 0
    from committed import dense_fingerprint

    paths = quality.Paths(HERE / ".cache" / "quality", HERE / "results")
    bench = quality.BENCHES[args.bench]
    scenes = quality.ensure_data(bench, paths)
    dense = quality.ensure_dense(bench, 0, paths)
    cache = HERE / ".cache" / "deploy"
    work = cache / "runs"
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(SEEDS)
    sparsities = [float(s) for s in args.sparsities.split(",")] if args.sparsities else list(SPARSITIES)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not set(sparsities) <= set(SPARSITIES):
        raise SystemExit(f"rows must be among {', '.join(ROWS)}; sparsities among {SPARSITIES}")
    fingerprint = dense_fingerprint(dense / "model.pt")
    committed = committed_cells(results_json, bench.name, fingerprint)
    saved = json.loads(results_json.read_text())["runs"] if results_json.is_file() else []
    stale = [r for r in saved if _bench_of(r) == bench.name and r.get("dense_fingerprint") != fingerprint]
    if stale:
        raise SystemExit(
            f"{results_json} has {len(stale)} {bench.name} cells of another dense checkpoint (fingerprint "
            f"{stale[0].get('dense_fingerprint')} here {fingerprint}); move it away to start this benchmark over"
        )
    others = [r for r in saved if _bench_of(r) != bench.name]
    todo, results = [], list(committed.values())
    # The acceptance's 50% first, every row before the next seed: a partial run compares like with like.
    order = sorted(sparsities, key=lambda sp: (sp != 0.5, sp))
    for seed in seeds:
        for sp in order:
            for row in rows:
                key = _key(row, sp, seed, bench.name)
                path = cache / f"{key}.json"
                if key in committed:
                    continue
                if path.is_file():
                    results.append(json.loads(path.read_text()))
                else:
                    todo.append((row, sp, seed, bench.name, str(scenes), str(dense), str(work), str(cache)))
    print(f"{len(results)} cells cached or committed, {len(todo)} to run", flush=True)

    def save() -> None:
        everything = others + results
        results_json.write_text(json.dumps({"version": VERSION, "runs": everything}, indent=1) + "\n")
        (HERE / "results" / "deploy.md").write_text(render(everything))

    failed: list[dict[str, Any]] = []

    def show(r: dict[str, Any]) -> None:
        if "error" in r:  # not cached: the next run retries it
            failed.append(r)
            print(f"{r['row']} {r['sparsity']} seed {r['seed']}: FAILED ({r['error']})", flush=True)
            return
        results.append(r)
        print(f"{r['row']} {r['sparsity']} seed {r['seed']}: Δ_T {r['delta_t']:.2f}, b1 {r['speedup_b1']:.2f}×")
        save()

    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for r in pool.imap_unordered(_work, todo):
                show(r)
    else:
        for item in todo:
            show(_work(item))
    save()
    if failed:
        print(f"{len(failed)} cells failed and were not cached (rerun to retry): see FAILED above", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Loader speed: samples/s of every built-in dataset layout, at its real image size, as training reads it.

    python benchmarks/loaders.py            # ~1-2 min on 2 CPU cores; writes benchmarks/results/loaders.md
    python benchmarks/loaders.py --quick    # small images, a few seconds

For each layout (generated with `adapmtl data synth`'s writers into a temporary folder) it measures
`dataset[i]` alone (decode cost per sample), then batches of 8 through the same DataLoader set-up `prune` uses,
with 0 and 2 worker processes, with and without `--augment`. Each figure is the best of three passes over the
split, so disk caching is the same for all. For scale it also times one training step of the reference
DeepLab-ResNet (the full-size one) on a batch of the same size: loading keeps up when samples/s of the loader
exceeds 8 / step time.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from adapmtl_cli.data import get_dataset
from adapmtl_cli.data.synth.generate import generate

HERE = Path(__file__).resolve().parent

# layout for `data synth`, --data, real size (H, W), options that apply
LAYOUTS = (
    ("nyuv2", "nyuv2", (288, 384), {}),
    ("nyuv2-adashare", "nyuv2", (480, 640), {}),
    ("taskonomy", "taskonomy", (256, 256), {}),
)


def best_rate(fn, samples: int, passes: int = 3) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return samples / best


def item_rate(dataset) -> float:  # noqa: ANN001
    n = len(dataset)
    return best_rate(lambda: [dataset[i] for i in range(n)], n)


def loader_rate(dataset, workers: int, batch: int = 8) -> float:  # noqa: ANN001
    n = len(dataset) // batch * batch

    def run() -> None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(0, 0)
        loader = DataLoader(dataset, batch_size=batch, shuffle=False, drop_last=True, num_workers=workers)
        for _ in loader:
            pass

    return best_rate(run, n)


def step_time(size: tuple[int, int], batch: int = 8, reps: int = 3) -> float:
    from adapmtl_cli.models import deeplab_resnet

    model = deeplab_resnet().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, *size)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        out = model(x)
        loss = sum(v.float().mean() for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64x80 images, 16 samples, no training-step reference")
    ap.add_argument("--samples", type=int, default=32, help="samples per split")
    ap.add_argument("--out", default=str(HERE / "results" / "loaders.md"), help="Markdown file, or - for none")
    args = ap.parse_args(argv)
    samples = 16 if args.quick else args.samples
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, data, size, options in LAYOUTS:
            size = (64, 80) if args.quick else size
            root = Path(tmp) / layout
            generate(layout, root, train=samples, val=2, size=size, seed=0)
            for augment in (False, True):
                adapter = get_dataset(data, {**options, **({"augment": "true"} if augment else {})})
                train = adapter.open(root, "train")
                row = {
                    "layout": layout,
                    "size": f"{size[0]}x{size[1]}",
                    "augment": "yes" if augment else "no",
                    "item": item_rate(train),
                    "w0": loader_rate(train, 0),
                    "w2": loader_rate(train, 2),
                }
                if not args.quick and not augment:
                    row["needed"] = 8 / step_time(size)
                rows.append(row)
                print(row, flush=True)
    lines = [
        "# Loader speed",
        "",
        f"Command: `python benchmarks/loaders.py{' --quick' if args.quick else ''}` (wall time "
        f"{(time.perf_counter() - start) / 60:.1f} min; {platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, Python {sys.version.split()[0]}).",
        "",
        "Samples per second (best of three passes over a generated train split of "
        f"{samples} samples at the layout's real size). item: `dataset[i]` in a loop. w0 / w2: batches of 8 through "
        "a DataLoader with 0 / 2 worker processes. needed: 8 / (one training step of the full-size reference "
        "DeepLab-ResNet at batch 8 and this size, on this CPU): the rate the loader must sustain to keep the "
        "model busy.",
        "",
        "| layout | size | augment | item | w0 | w2 | needed |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        needed = f"{r['needed']:.1f}" if "needed" in r else "-"
        lines.append(
            f"| {r['layout']} | {r['size']} | {r['augment']} | {r['item']:.0f} | {r['w0']:.0f} | {r['w2']:.0f} | "
            f"{needed} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

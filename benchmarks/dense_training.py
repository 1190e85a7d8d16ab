"""Dense reference checkpoints for the quality benchmark, trained to a recorded plateau.

Multitask training with equal task weights, Adam with a cosine schedule, on the ``train`` split; the summed task
loss on the ``dev`` split (the generator's ``val``) is recorded every tenth of the run. The plateau rule of issue
#13: the last 20% of training changes the dev loss by less than 1%. The curve and the verdict are saved beside
the checkpoint and quoted in the results file.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, cast

import torch

PLATEAU_TOLERANCE = 0.01
"""The dev loss may change by less than this fraction over the last 20% of dense training."""
POINTS = 10
"""Dev-loss evaluations over the run (plus one before the first step)."""


def _dev_loss(model: torch.nn.Module, dev: Any, tasks: list[Any], mapping: Any, batch: int) -> float:
    from torch.utils.data import DataLoader

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in DataLoader(dev, batch_size=batch):
            out = mapping.select(model(x))
            total += float(sum(t.loss(out[t.name], y[t.name]) for t in tasks)) * len(x)
            n += len(x)
    model.train()
    return total / n


def train(bench: Any, scenes: Path, seed: int, out: Path) -> dict[str, Any]:
    """Train the dense model of ``bench`` with ``seed``, save its state_dict to ``out``; returns the curve."""
    from adapmtl_cli.api import discover
    from adapmtl_cli.data.registry import get_dataset
    from adapmtl_cli.files.atomic import save_torch
    from adapmtl_cli.models import MODELS
    from adapmtl_cli.train.batches import to_device, train_batches

    torch.manual_seed(seed)
    adapter = get_dataset("synthetic")
    tasks = adapter.tasks(scenes)
    train_set, dev = adapter.open(scenes, "train"), adapter.open(scenes, "val")
    model = MODELS[bench.factory]()
    x0 = torch.stack([train_set[i][0] for i in range(2)])
    mapping = discover(model.eval(), x0, tasks).mapping
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=bench.dense_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=bench.dense_steps)
    batches = train_batches(train_set, bench.batch_size, seed, 0)
    every = max(1, bench.dense_steps // POINTS)
    curve = [(0, _dev_loss(model, dev, tasks, mapping, 16))]
    started = time.perf_counter()
    for step in range(1, bench.dense_steps + 1):
        x, y = to_device(next(batches), torch.device("cpu"))
        out_ = mapping.select(model(x))
        loss = cast(torch.Tensor, sum(t.loss(out_[t.name], y[t.name]) for t in tasks))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == bench.dense_steps:
            curve.append((step, _dev_loss(model, dev, tasks, mapping, 16)))
            print(f"  dense seed {seed} step {step}: dev loss {curve[-1][1]:.4f}", flush=True)
    save_torch(out, model.eval().state_dict())
    return verdict({"seed": seed, "steps": bench.dense_steps, "seconds": time.perf_counter() - started,
                    "curve": curve})  # fmt: skip


def verdict(record: dict[str, Any]) -> dict[str, Any]:
    """Add the plateau verdict: dev loss at 80% of the run vs at the end."""
    curve = record["curve"]
    steps = record["steps"]
    at80 = min(curve, key=lambda p: abs(p[0] - 0.8 * steps))
    end = curve[-1]
    change = abs(end[1] - at80[1]) / end[1] if end[1] else math.inf
    return {**record, "change_last_20pct": change, "plateau": change < PLATEAU_TOLERANCE}


def describe(curve: dict[str, Any], seed: int) -> str:
    """One line for the results file: the plateau verdict and the dev loss at the start and end."""
    start, end = curve["curve"][0][1], curve["curve"][-1][1]
    verdict_ = "plateau" if curve["plateau"] else "NOT at a plateau"
    return (
        f"seed {seed}: {curve['steps']} steps, dev loss {start:.3f} → {end:.3f}, last 20% changed it by "
        f"{curve['change_last_20pct']:.2%} ({verdict_})"
    )


def backbone_share(bench: Any) -> float:
    """The backbone's share of the model's prunable weights, from discovery on one input of the bench's size."""
    from adapmtl_cli.api import discover
    from adapmtl_cli.models import MODELS

    model = MODELS[bench.factory]().eval()
    found = discover(model, torch.zeros(2, 3, *bench.size), ["segmentation", "depth", "normal"])
    sizes = {c.name: c.prunable_params for c in found.cmap.components}
    return sizes.get("backbone", 0) / sum(sizes.values())

"""``adapmtl demo``: the whole job on generated data, from nothing, in about two minutes on two CPU cores.

Generate NYU-like scenes, train a tiny DeepLab-style MTL model densely (the "existing checkpoint" a user would
bring), save it as a plain state_dict, then prune it through the same ``run_prune`` and ``export_run`` a user's
command line reaches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from adapmtl_cli.config import DEFAULTS, ExportManifest, RunReport, make_prune_config
from adapmtl_cli.data import get_dataset
from adapmtl_cli.data.synth.scenes import generate_scenes
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.files.atomic import save_torch
from adapmtl_cli.jobs.export import export_run
from adapmtl_cli.jobs.prepare import Hooks
from adapmtl_cli.jobs.prune import run_prune
from adapmtl_cli.models import deeplab_resnet_tiny
from adapmtl_cli.train.loop import StepInfo, to_device, train_batches

DEMO_FACTORY = "adapmtl_cli.models:deeplab_resnet_tiny"
DEMO_SIZE = (72, 96)
DENSE_STEPS = 1200
"""Steps that train the demo's dense model (``adapmtl demo --dense-steps``)."""


@dataclass(frozen=True)
class DemoResult:
    run: Path
    report: RunReport
    export: ExportManifest
    seconds: float


def train_dense(
    data_dir: Path,
    steps: int,
    seed: int = 0,
    lr: float = 2e-3,
    build: Callable[[], torch.nn.Module] = deeplab_resnet_tiny,
) -> torch.nn.Module:
    """Train a dense reference model (default: the demo's): multitask training, equal weights, cosine LR."""
    torch.manual_seed(seed)
    adapter = get_dataset("synthetic")
    tasks = adapter.tasks(data_dir)
    train = adapter.open(data_dir, "train")
    model = build()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    batches = train_batches(train, 8, seed, 0)
    for _ in range(steps):
        x, y = to_device(next(batches), torch.device("cpu"))
        out = model(x)
        loss = cast(torch.Tensor, sum(t.loss(out[t.name], y[t.name]) for t in tasks))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def run_demo(
    out: Path,
    *,
    sparsity: float = DEFAULTS.sparsity,
    steps: int = DEFAULTS.steps,
    dense_steps: int = DENSE_STEPS,
    overwrite: bool = False,
    status: Callable[[str], None] = lambda msg: None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_eval: Callable[[str, int, int], None] | None = None,
) -> DemoResult:
    """Run the demo into ``out`` (``scenes/``, ``model.pt``, ``run/`` with its ``export/``)."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {str(out)!r} already holds files; pass --overwrite or another --out")
    scenes = out / "scenes"
    status(f"generating scenes in {scenes}")
    generate_scenes(scenes, train=192, val=48, size=DEMO_SIZE, seed=0, overwrite=True)
    status(f"training the dense demo model ({dense_steps} steps)")
    model = train_dense(scenes, dense_steps)
    checkpoint = out / "model.pt"
    save_torch(checkpoint, model.state_dict())
    cfg = make_prune_config(
        checkpoint=str(checkpoint),
        factory=DEMO_FACTORY,
        data="synthetic",
        data_dir=str(scenes),
        sparsity=sparsity,
        steps=steps,
        lr=5e-4,
        out=str(out / "run"),
    )
    report = run_prune(cfg, overwrite=True, hooks=Hooks(status=status, on_step=on_step, on_eval=on_eval))
    status("exporting (dense + sparse safetensors, ONNX with onnxruntime parity)")
    manifest = export_run(out / "run", onnx=True)
    return DemoResult(out / "run", report, manifest, time.perf_counter() - started)

"""``adapmtl demo``: the whole job on generated data, from nothing, in about a minute and a half on two CPU cores.

Generate NYU-like scenes, train a tiny DeepLab-style MTL model densely (the "existing checkpoint" a user would
bring), save it as a plain state_dict, then prune it through the same ``run_prune`` and ``export_run`` a user's
command line reaches. Every phase reports its progress, and Ctrl-C says what each phase leaves behind.

The sizes are small, but the dense model clearly learns all three tasks (it beats the best constant prediction
on each by far: ``report.chance``; ``tests/jobs/test_demo.py``) and the pruned model still shows what pruning costs
each task; README's "Set up and try it" has the measured CPU and wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from adapmtl_cli.config import DEFAULTS, ExportManifest, PruneConfig, RunReport, make_prune_config
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
DEMO_SCENES = (160, 40)
"""Train and val scenes the demo generates."""
DENSE_STEPS = 400
"""Steps that train the demo's dense model (``adapmtl demo --dense-steps``)."""
DENSE_LR = 4e-3
DEMO_STEPS = 200
"""Pruning fine-tune steps of the demo (``adapmtl demo --steps``); ``prune`` itself defaults to ``DEFAULTS.steps``."""
DEMO_LR = 5e-4

Progress = Callable[[str, int, int], None]
"""``(phase, done, total)``: ``scenes`` and ``dense`` at 0 and after each scene or step, ``export`` at 0 and 1 of 1."""


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
    lr: float = DENSE_LR,
    build: Callable[[], torch.nn.Module] = deeplab_resnet_tiny,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.nn.Module:
    """Train a dense reference model (default: the demo's): multitask training, equal weights, cosine LR.

    ``on_step(done, steps)`` is called after each step.
    """
    torch.manual_seed(seed)
    adapter = get_dataset("synthetic")
    tasks = adapter.tasks(data_dir)
    train = adapter.open(data_dir, "train")
    model = build()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    batches = train_batches(train, 8, seed, 0)
    for step in range(steps):
        x, y = to_device(next(batches), torch.device("cpu"))
        out = model(x)
        loss = cast(torch.Tensor, sum(t.loss(out[t.name], y[t.name]) for t in tasks))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, steps)
    return model.eval()


def check_demo_folder(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds files unless ``overwrite`` (the demo replaces what it wrote before).

    Raises:
        ConfigError: ``out`` holds files and ``overwrite`` is off, or ``out`` is a file.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder for the demo")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {str(out)!r} already holds files; pass --overwrite or another --out")


def interrupted_message(phase: str, out: Path) -> str:
    """What Ctrl-C during ``phase`` leaves in ``out``, and the command that goes on from there."""
    again = f"start again with `adapmtl demo --out {out} --overwrite`"
    run = out / "run"
    return {
        "scenes": f"interrupted while generating scenes; nothing the demo can reuse is kept; {again}",
        "dense": (
            f"interrupted while training the dense model, which was not saved (the scenes in {out / 'scenes'} "
            f"are kept); {again}"
        ),
        "prune": (
            f"interrupted while pruning; the trained dense model {out / 'model.pt'} and the run {run} with its "
            f"last saved state are kept: continue with `adapmtl resume {run}`, then `adapmtl export {run} --onnx`"
        ),
        "export": (
            f"interrupted while exporting; the pruned run {run} is complete and kept: export it with "
            f"`adapmtl export {run} --onnx`"
        ),
    }[phase]


def run_demo(
    out: Path,
    *,
    sparsity: float = DEFAULTS.sparsity,
    steps: int = DEMO_STEPS,
    dense_steps: int = DENSE_STEPS,
    overwrite: bool = False,
    status: Callable[[str], None] = lambda msg: None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_eval: Callable[[str, int, int], None] | None = None,
    on_progress: Progress | None = None,
) -> DemoResult:
    """Run the demo into ``out`` (``scenes/``, ``model.pt``, ``run/`` with its ``export/``).

    Raises:
        ConfigError: ``out`` holds files and ``overwrite`` is off.
        KeyboardInterrupt: on Ctrl-C, with :func:`interrupted_message`'s text.
    """
    started = time.perf_counter()
    out = Path(out)
    check_demo_folder(out, overwrite)
    progress: Progress = on_progress or (lambda phase, done, total: None)
    phase = "scenes"
    try:
        scenes = out / "scenes"
        train, val = DEMO_SCENES
        status(f"generating {train + val} scenes in {scenes}")
        progress("scenes", 0, train + val)
        generate_scenes(
            scenes,
            train=train,
            val=val,
            size=DEMO_SIZE,
            seed=0,
            overwrite=True,
            on_progress=lambda done, total: progress("scenes", done, total),
        )
        phase = "dense"
        status(f"training the dense demo model ({dense_steps} steps)")
        progress("dense", 0, dense_steps)
        model = train_dense(scenes, dense_steps, on_step=lambda done, total: progress("dense", done, total))
        checkpoint = out / "model.pt"
        save_torch(checkpoint, model.state_dict())
        phase = "prune"
        report = run_prune(
            _prune_config(checkpoint, scenes, out / "run", sparsity, steps),
            overwrite=True,
            hooks=Hooks(status=status, on_step=on_step, on_eval=on_eval),
        )
        phase = "export"
        status("exporting (dense + sparse safetensors, ONNX with onnxruntime parity)")
        progress("export", 0, 1)
        manifest = export_run(out / "run", onnx=True)
        progress("export", 1, 1)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_message(phase, out)) from None
    return DemoResult(out / "run", report, manifest, time.perf_counter() - started)


def _prune_config(checkpoint: Path, scenes: Path, run: Path, sparsity: float, steps: int) -> PruneConfig:
    return make_prune_config(
        checkpoint=str(checkpoint),
        factory=DEMO_FACTORY,
        data="synthetic",
        data_dir=str(scenes),
        sparsity=sparsity,
        steps=steps,
        lr=DEMO_LR,
        out=str(run),
    )

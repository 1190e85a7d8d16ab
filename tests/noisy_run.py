"""A tiny run that draws from every global random stream: a dataset plug-in and a model with dropout and jitter.

The model draws from torch's stream (dropout), numpy's and Python's ``random`` in its forward; the dataset draws
from all three for every item (augmentation that does not use ``set_epoch``). Used by the resume and run-folder
tests; a run takes a few seconds on the CPU.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch

from adapmtl_cli.config import RunReport, make_prune_config
from adapmtl_cli.jobs.prepare import Hooks
from adapmtl_cli.jobs.prune import run_prune

PLUGIN = """
import random

import numpy as np
import torch

TASKS = [
    {"kind": "classification", "name": "kind", "num_classes": 3},
    {"kind": "regression", "name": "size", "num_outputs": 1, "loss": "mse"},
]


class Noisy:
    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 6, 6, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        jitter = torch.rand(1, 6, 6) * 0.1 + float(np.random.rand()) * 0.1 + random.random() * 0.1
        return self.x[i] + jitter, {"kind": torch.tensor(i % 3), "size": torch.tensor([float(i % 4)])}


def dataset(root, split):
    return Noisy(12 if split == "train" else 4, 0 if split == "train" else 1)
"""

MODEL = """
import random

import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        self.kind = nn.Linear(32, 3)
        self.size = nn.Linear(32, 1)

    def forward(self, x):
        f = self.trunk(x)
        if self.training:
            f = f * (1.0 + 0.01 * float(np.random.rand()) + 0.01 * random.random())
        return {"kind": self.kind(f), "size": self.size(f)}


def build():
    return Net()
"""

STEPS, SAVE_EVERY = 10, 2  # 12 samples in batches of 4: 3 steps per epoch, so step 4 is mid-epoch


def write_noisy_inputs(tmp_path: Path) -> dict[str, str]:
    """Write the plug-in, the factory file and a seeded checkpoint into ``tmp_path``; the run's inputs."""
    (tmp_path / "noisy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "noisy_net.py").write_text(textwrap.dedent(MODEL))
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(MODEL), "noisy_net", "exec"), namespace)
    torch.manual_seed(0)
    torch.save(namespace["build"]().state_dict(), tmp_path / "dense.pt")
    return {
        "checkpoint": str(tmp_path / "dense.pt"),
        "factory": f"{tmp_path / 'noisy_net.py'}:build",
        "data": str(tmp_path / "noisy_plugin.py"),
        "data_dir": str(tmp_path),
    }


def run_noisy(
    inputs: dict[str, str], out: Path, workers: int = 0, hooks: Hooks | None = None, **options: Any
) -> RunReport:
    """A short ``prune`` of the noisy model on the noisy data (``options`` override the run's settings)."""
    settings: dict[str, Any] = {"sparsity": 0.6, "steps": STEPS, "batch_size": 4, "save_every": SAVE_EVERY}
    settings |= {"log_every": 1, "num_workers": workers, "device": "cpu", "out": str(out)}
    return run_prune(make_prune_config(**inputs, **(settings | options)), hooks=hooks)

"""Prune a LibMTL-style model: one ``encoder`` plus ``decoders`` (an ``nn.ModuleDict`` with one head per task).

    python examples/libmtl_encoder_decoders.py [--work DIR] [--steps N]

LibMTL builds ``encoder = encoder_class()`` and ``decoders = nn.ModuleDict({task: head})`` and returns a dict
``{task: decoder(rep)}`` from ``forward(inputs, task_name=None)``. That is hard parameter sharing, so discovery
finds ``encoder`` as the backbone and ``decoders.<task>`` as the heads without any naming hints. This file is
also the factory: ``--factory examples/libmtl_encoder_decoders.py:build``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

TASKS = {"segmentation": 13, "depth": 1, "normal": 3}  # output channels, as in LibMTL's NYUv2 example


class Encoder(nn.Module):
    """A small ResNet-like encoder at output stride 4 (LibMTL would use a dilated ResNet-50 here)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 2, dilation=2, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


class Decoder(nn.Module):
    """An ASPP-flavoured head: two dilated 3x3 branches summed, then a 1x1 classifier."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in (1, 3))
        self.classifier = nn.Conv2d(channels, out, 1)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(sum(b(rep) for b in self.branches)))


class LibMTLStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.task_name = list(TASKS)
        self.encoder = Encoder()
        self.decoders = nn.ModuleDict({t: Decoder(64, c) for t, c in TASKS.items()})

    def forward(self, inputs: torch.Tensor, task_name: str | None = None) -> dict[str, torch.Tensor]:
        rep = self.encoder(inputs)
        tasks = self.task_name if task_name is None else [task_name]
        return {t: self.decoders[t](rep) for t in tasks}


def build() -> nn.Module:
    """The factory adapmtl calls (no arguments) to rebuild the architecture before loading the state_dict."""
    return LibMTLStyle()


def adapmtl(*args: object) -> None:
    print("$ adapmtl", " ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, "-m", "adapmtl_cli", *map(str, args)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("example-runs/libmtl"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)

    scenes = work / "scenes"
    if not scenes.exists():
        adapmtl("data", "synth", scenes, "--train", 32, "--val", 8, "--size", "48,64", "--seed", 0)
    torch.manual_seed(0)
    torch.save(build().state_dict(), work / "model.pt")  # LibMTL saves model.state_dict() the same way

    factory = f"{Path(__file__).resolve()}:build"
    adapmtl("inspect", work / "model.pt", "--factory", factory, "--data-dir", scenes, "--batch-size", 4)
    # The same options as a config file: what a team would commit next to the checkpoint.
    config = work / "prune.toml"
    config.write_text(
        f'checkpoint = "{work / "model.pt"}"\nfactory = "{factory}"\ndata_dir = "{scenes}"\n'
        f'out = "{work / "run"}"\nsparsity = 0.85\nsteps = {args.steps}\nbatch_size = 4\n',
        encoding="utf-8",
    )
    adapmtl("prune", "--config", config, "--print-config")
    adapmtl("prune", "--config", config, "--overwrite", "-q")
    adapmtl("report", work / "run", "--format", "html", "--output", work / "report.html")


if __name__ == "__main__":
    main()

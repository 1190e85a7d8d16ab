"""Prune a model saved as a state_dict, rebuilt by a factory function (the most common case).

    python examples/state_dict_factory.py [--work DIR] [--steps N]

Your training code saved ``torch.save(model.state_dict(), "model.pt")``; adapmtl needs a function that builds
the same architecture with no arguments (``--factory package.module:function`` or ``path/to/file.py:function``).
Here the architecture is the reference DeepLab-style model; swap in your own factory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from adapmtl_cli.models import deeplab_resnet_tiny


def adapmtl(*args: object) -> None:
    cmd = [sys.executable, "-m", "adapmtl_cli", *map(str, args)]
    print("$ adapmtl", " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("example-runs/state-dict"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)

    scenes = work / "scenes"
    if not scenes.exists():
        adapmtl("data", "synth", scenes, "--train", 32, "--val", 8, "--size", "48,64", "--seed", 0)

    torch.manual_seed(0)
    torch.save(deeplab_resnet_tiny().state_dict(), work / "model.pt")  # stands in for your trained checkpoint

    common = ["--factory", "adapmtl_cli.models:deeplab_resnet_tiny", "--data-dir", scenes]
    adapmtl("inspect", work / "model.pt", *common, "--batch-size", 4, "--steps", args.steps)
    adapmtl(
        "prune", work / "model.pt", *common, "--sparsity", 0.9, "--steps", args.steps, "--batch-size", 4,
        "--out", work / "run", "--overwrite", "-q",
    )  # fmt: skip
    adapmtl("report", work / "run", "--layers", "--sort", "sparsity")


if __name__ == "__main__":
    main()

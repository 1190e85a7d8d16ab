"""Prune a whole pickled ``nn.Module`` (``torch.save(model)``), which needs ``--trust-pickle``.

    python examples/pickled_model.py [--work DIR] [--steps N]

Unpickling runs code named in the file, so adapmtl refuses it unless you pass ``--trust-pickle``; without the
flag it names the classes the file would import. The classes must be importable (here: the reference models).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from adapmtl_cli.models import deeplab_resnet_tiny


def adapmtl(*args: object, check: bool = True) -> int:
    print("$ adapmtl", " ".join(map(str, args)), flush=True)
    return subprocess.run([sys.executable, "-m", "adapmtl_cli", *map(str, args)], check=check).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("example-runs/pickled"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)

    scenes = work / "scenes"
    if not scenes.exists():
        adapmtl("data", "synth", scenes, "--train", 32, "--val", 8, "--size", "48,64", "--seed", 0)

    torch.manual_seed(0)
    torch.save(deeplab_resnet_tiny(), work / "model.pt")  # the whole module, pickled

    print("# without --trust-pickle adapmtl refuses, naming the classes it would import (exit code 2):")
    adapmtl("inspect", work / "model.pt", "--data-dir", scenes, "--json", check=False)
    adapmtl(
        "prune", work / "model.pt", "--trust-pickle", "--data-dir", scenes, "--sparsity", 0.8,
        "--steps", args.steps, "--batch-size", 4, "--out", work / "run", "--overwrite", "-q",
    )  # fmt: skip
    adapmtl("report", work / "run", "--format", "markdown")


if __name__ == "__main__":
    main()

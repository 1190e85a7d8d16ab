"""Prune a checkpoint written by a ``torchrun`` (DistributedDataParallel) training job.

    python examples/torchrun_checkpoint.py [--work DIR] [--steps N]

The script first launches a short two-process DDP training on CPU (``torchrun --nproc-per-node 2``, gloo
backend) that saves ``ddp_model.state_dict()`` from rank 0: every key carries DDP's ``module.`` prefix, as in
most checkpoints from multi-GPU jobs. ``adapmtl`` strips the prefix and loads it into the factory's model.
``adapmtl prune`` itself runs as one process (one GPU or the CPU); it does not need ``torchrun``.

Run only the training part yourself with: torchrun --nproc-per-node 2 examples/torchrun_checkpoint.py --train DIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from adapmtl_cli.models import deeplab_resnet_tiny


def train(out: Path, steps: int = 5) -> None:
    """The DDP job (one process per rank): a few steps on random data, then rank 0 saves the wrapped state_dict."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(deeplab_resnet_tiny())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        x = torch.randn(2, 3, 48, 64, generator=g)
        loss = sum(v.float().pow(2).mean() for v in model(x).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    if rank == 0:
        torch.save(model.state_dict(), out)  # keys start with "module."
    dist.barrier()
    dist.destroy_process_group()


def adapmtl(*args: object) -> None:
    print("$ adapmtl", " ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, "-m", "adapmtl_cli", *map(str, args)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("example-runs/torchrun"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--train", type=Path, help="internal: be one rank of the torchrun job, save to this file")
    args = parser.parse_args()
    if args.train is not None:
        train(args.train)
        return
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "ddp_model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    print("$ torchrun --nproc-per-node 2 --standalone", Path(__file__).name, "--train", ckpt, flush=True)
    subprocess.run([*launch, __file__, "--train", str(ckpt)], check=True, env=env)
    keys = list(torch.load(ckpt, weights_only=True))
    print(f"# {ckpt} has {len(keys)} tensors, e.g. {keys[0]!r}")

    scenes = work / "scenes"
    if not scenes.exists():
        adapmtl("data", "synth", scenes, "--train", 32, "--val", 8, "--size", "48,64", "--seed", 0)
    adapmtl(
        "prune", ckpt, "--factory", "adapmtl_cli.models:deeplab_resnet_tiny", "--data-dir", scenes,
        "--sparsity", 0.9, "--steps", args.steps, "--batch-size", 4, "--out", work / "run", "--overwrite",
        "--log-format", "jsonl",
    )  # fmt: skip
    adapmtl("report", work / "run")


if __name__ == "__main__":
    main()

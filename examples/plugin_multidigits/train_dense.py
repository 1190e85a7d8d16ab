"""Write the MultiDigits data and train the dense model that ``adapmtl prune`` then prunes (a few seconds on CPU).

Usage:
    python examples/plugin_multidigits/train_dense.py DIR [--steps 400] [--seed 0]

Writes ``DIR/data/{train,val}/`` (see ``plugin.py``) and ``DIR/dense.pt`` (the model's state_dict), and prints
the dense model's validation accuracy per digit and the mean absolute error of the sum.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from model import build
from plugin import dataset, make_data
from torch.utils.data import DataLoader


def train(out: Path, steps: int, seed: int) -> dict[str, float]:
    """Make the data under ``out / "data"``, train for ``steps`` batches of 64, save ``out / "dense.pt"``."""
    make_data(out / "data", seed=seed)
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(dataset(out / "data", "train"), batch_size=64, shuffle=True, drop_last=True)
    step = 0
    while step < steps:
        for x, y in loader:
            pred = model(x)
            # The sum is in digits (0..18): a large L1 gradient early on kills the trunk's ReLUs, so it is damped.
            loss = (
                F.cross_entropy(pred["left"], y["left"])
                + F.cross_entropy(pred["right"], y["right"])
                + 0.05 * F.l1_loss(pred["sum"], y["sum"])
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    torch.save(model.state_dict(), out / "dense.pt")
    return evaluate(model, out / "data")


@torch.no_grad()
def evaluate(model: torch.nn.Module, root: Path) -> dict[str, float]:
    """Validation accuracy of each digit and mean absolute error of the sum."""
    model.eval()
    hits = {"left": 0, "right": 0}
    abs_err = 0.0
    val = dataset(root, "val")
    for x, y in DataLoader(val, batch_size=256):
        out = model(x)
        for name in hits:
            hits[name] += int((out[name].argmax(1) == y[name]).sum())
        abs_err += float((out["sum"] - y["sum"]).abs().sum())
    scores = {f"{name}_accuracy": hits[name] / len(val) for name in hits}
    return {**scores, "sum_mae": abs_err / len(val)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="Folder to write data/ and dense.pt into.")
    parser.add_argument("--steps", type=int, default=400, help="Training batches of 64.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    scores = train(args.dir, args.steps, args.seed)
    print(", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    print(f"wrote {args.dir / 'data'} and {args.dir / 'dense.pt'}")


if __name__ == "__main__":
    main()

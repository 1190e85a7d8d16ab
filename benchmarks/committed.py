"""Finished cells adopted from the committed results files, so a fresh checkout resumes where the last one stopped.

The cell cache (``benchmarks/.cache/quality/cells/``) is not committed: a new checkout starts with none of it.
Every finished cell is also a record in a committed results file (``benchmarks/results/quality*.json``), keyed
by the same hash of every setting that decides it (``quality_stats.cell_key``). A record is adopted for a cell of
the plan when its key is the cell's and its dense checkpoint is provably the one trained here: the record's
``dense_fingerprint`` (a hash of the checkpoint's tensors) equals the local checkpoint's, or, for records written
before fingerprints existed, its results file's dense-training line for that seed (start and end dev loss, the
plateau change, to the printed digits) equals the local one. Anything else is left to run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def dense_fingerprint(model_pt: Path) -> str:
    """A hash of the checkpoint's tensors (names, dtypes, shapes, values), independent of the file's layout."""
    import torch

    state = torch.load(model_pt, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def _dense_lines(results: dict[str, Any], bench_name: str) -> dict[int, str]:
    """Dense seed → that seed's dense-training line in a results file (``"seed S: ..."``)."""
    out: dict[int, str] = {}
    for bench in results.get("benchmarks", []):
        if not isinstance(bench, dict) or bench.get("name") != bench_name:
            continue
        for part in str(bench.get("dense_note", "")).split("; "):
            head, _, _ = part.partition(":")
            if head.startswith("seed ") and head[5:].strip().isdigit():
                out[int(head[5:])] = part.strip()
    return out


def adoptable(
    results_dir: Path, keys: set[str], bench_name: str, local: dict[int, tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Key → committed record for the ``keys`` whose dense checkpoint matches ``local``.

    ``local``: dense seed → (fingerprint, dense-training line) of the checkpoints trained here; a seed not in it
    has no local checkpoint yet, and its records wait.
    """
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("quality*.json")):
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
            continue  # an older layout (quality-previous.json): no keyed cells
        lines = _dense_lines(results, bench_name)
        for record in results["runs"]:
            key = record.get("key") if isinstance(record, dict) else None
            if key not in keys or key in found or record.get("benchmark") != bench_name:
                continue
            seed = record.get("dense_seed")
            if seed not in local:
                continue
            fingerprint, line = local[seed]
            if "dense_fingerprint" in record:
                same = record["dense_fingerprint"] == fingerprint
            else:
                same = lines.get(seed) == line
            if same:
                found[key] = record
    return found


__all__ = ["adoptable", "dense_fingerprint"]

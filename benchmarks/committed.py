"""Finished cells adopted from the committed results files, so a fresh checkout resumes where the last one stopped.

The cell cache (``benchmarks/.cache/quality/cells/``) is not committed: a new checkout starts with none of it.
Every finished cell is also a record in a committed results file (``benchmarks/results/quality*.json``), keyed
by the same hash of every setting that decides it (``quality_stats.cell_key``). A record is adopted for a cell of
the plan when its key is the cell's and its dense checkpoint is provably the one trained here: the record's
``dense_fingerprint`` (a hash of the checkpoint's tensors) equals the local checkpoint's, or, for records written
before fingerprints existed, its results file's dense-training line for that seed (start and end dev loss, the
plateau change, to the printed digits) equals the local one. Anything else is left to run.

Dense training is deterministic on one machine but not across machines (session 9: a fresh machine retrained
``mobilenet_aspp_tiny`` seed 0 to dev loss 1.640 where the committed records' checkpoint had reached 1.759, so none
of the 146 committed 400-step cells could be adopted). So the dense checkpoints the committed tables use are
committed too (``benchmarks/dense/``, :func:`store_dense`, a few MB each): a fresh checkout on any machine restores
them (:func:`restore_dense`) instead of retraining, after checking that the scenes it generated are the ones the
checkpoint was trained on (:func:`data_fingerprint`).
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


DENSE_FILES = ("model.pt", "curve.json")


def data_fingerprint(scenes: Path) -> str:
    """A hash of every generated file under ``scenes`` (relative names and bytes, in sorted order)."""
    h = hashlib.sha256()
    for path in sorted(p for p in scenes.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(scenes)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def store_dense(folder: Path, stored: Path, scenes: Path) -> None:
    """Copy the dense checkpoint in ``folder`` to ``stored`` (committed), with its data's fingerprint."""
    import shutil

    stored.mkdir(parents=True, exist_ok=True)
    for name in DENSE_FILES:
        shutil.copyfile(folder / name, stored / name)
    identity = {
        "dense_fingerprint": dense_fingerprint(folder / "model.pt"),
        "data_fingerprint": data_fingerprint(scenes),
    }
    (stored / "identity.json").write_text(json.dumps(identity, indent=1) + "\n")


def restore_dense(stored: Path, folder: Path, scenes: Path) -> bool:
    """Copy the committed dense checkpoint ``stored`` into the cache ``folder``; False when none is committed.

    Raises SystemExit when the scenes generated here differ from those it was trained on, or the files from
    their recorded fingerprint (the committed cells would not be this machine's computation).
    """
    import shutil

    if not (stored / "identity.json").is_file():
        return False
    identity = json.loads((stored / "identity.json").read_text())
    here = data_fingerprint(scenes)
    if identity.get("data_fingerprint") != here:
        raise SystemExit(
            f"the scenes generated here (fingerprint {here}) differ from those the committed dense checkpoint "
            f"{stored} was trained on ({identity.get('data_fingerprint')}); move that folder away to retrain"
        )
    if dense_fingerprint(stored / "model.pt") != identity.get("dense_fingerprint"):
        raise SystemExit(f"{stored / 'model.pt'} does not match its recorded fingerprint; restore it from git")
    folder.mkdir(parents=True, exist_ok=True)
    for name in DENSE_FILES:
        shutil.copyfile(stored / name, folder / name)
    return True


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


__all__ = ["adoptable", "data_fingerprint", "dense_fingerprint", "restore_dense", "store_dense"]

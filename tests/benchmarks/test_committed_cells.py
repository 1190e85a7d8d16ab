"""Cells adopted from committed results files: only with the same key and a provably identical dense checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import committed  # noqa: E402
import dense_training  # noqa: E402
import quality  # noqa: E402


def _save(path: Path, scale: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({"b.weight": torch.randn(3, 2) * scale, "a.bias": torch.ones(4)}, path)
    return path


def test_the_fingerprint_follows_the_tensors_not_the_file(tmp_path: Path) -> None:
    one = committed.dense_fingerprint(_save(tmp_path / "one.pt", 1.0))
    again = committed.dense_fingerprint(_save(tmp_path / "again.pt", 1.0))
    other = committed.dense_fingerprint(_save(tmp_path / "other.pt", 1.0001))
    assert one == again and one != other


def _results(path: Path, runs: list[dict[str, object]], note: str = "") -> None:
    bench = {"name": "bench", "dense_note": note}
    path.write_text(json.dumps({"benchmarks": [bench], "runs": runs}))


def test_a_record_is_adopted_only_with_its_key_and_a_matching_dense_checkpoint(tmp_path: Path) -> None:
    runs = [
        {"key": "k1", "benchmark": "bench", "dense_seed": 0, "dense_fingerprint": "fp0", "delta_t": 1.0},
        {"key": "k2", "benchmark": "bench", "dense_seed": 0, "dense_fingerprint": "stale", "delta_t": 2.0},
        {"key": "k3", "benchmark": "bench", "dense_seed": 1, "dense_fingerprint": "fp1", "delta_t": 3.0},
        {"key": "k4", "benchmark": "other", "dense_seed": 0, "dense_fingerprint": "fp0", "delta_t": 4.0},
        {"key": "k5", "benchmark": "bench", "dense_seed": 0, "dense_fingerprint": "fp0", "delta_t": 5.0},
    ]
    _results(tmp_path / "quality-x.json", runs)
    (tmp_path / "notes.json").write_text(json.dumps({"runs": runs}))  # not a results file: never read
    (tmp_path / "quality-previous.json").write_text(json.dumps([{"key": "k2"}]))  # an older layout: skipped
    found = committed.adoptable(tmp_path, {"k1", "k2", "k3", "k4"}, "bench", {0: ("fp0", "line")})
    # k2: another dense checkpoint; k3: its dense seed is not trained here (waits); k4: another benchmark;
    # k5: not a cell of the plan
    assert set(found) == {"k1"} and found["k1"]["delta_t"] == 1.0


def test_a_record_without_fingerprint_needs_its_files_dense_training_line_for_that_seed(tmp_path: Path) -> None:
    line0 = "seed 0: 3000 steps, dev loss 6.604 → 1.759, last 20% changed it by 0.61% (plateau)"
    line1 = "seed 1: 3000 steps, dev loss 6.040 → 1.756, last 20% changed it by 0.16% (plateau)"
    runs = [
        {"key": "a", "benchmark": "bench", "dense_seed": 0, "delta_t": 1.0},
        {"key": "b", "benchmark": "bench", "dense_seed": 1, "delta_t": 2.0},
    ]
    _results(tmp_path / "quality.json", runs, note=f"{line0}; {line1}")
    same = committed.adoptable(tmp_path, {"a", "b"}, "bench", {0: ("x", line0), 1: ("y", line1)})
    assert set(same) == {"a", "b"}
    retrained = line1.replace("1.756", "1.757")
    assert set(committed.adoptable(tmp_path, {"a", "b"}, "bench", {0: ("x", line0), 1: ("y", retrained)})) == {"a"}


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        bench="aspp", rows="adapmtl", sparsities="0.9", seeds="0,1", dense_seeds="0", split="test",
        steps=400, lr=5e-4, threads=1, device="cpu", tag=None, results=tmp_path / "results",
    )  # fmt: skip


def test_a_fresh_checkout_resumes_from_the_committed_results_of_the_same_dense_checkpoint(tmp_path: Path) -> None:
    paths = quality.Paths(tmp_path / "cache", tmp_path / "results")
    bench = quality.BENCHES["aspp"]
    cells = quality.build_plan(_args(tmp_path), paths).cells
    assert len(cells) == 2
    folder = paths.dense(bench, 0)
    fingerprint = committed.dense_fingerprint(_save(folder / "model.pt", 1.0))
    curve = dense_training.verdict({"seed": 0, "steps": 10, "curve": [(0, 2.0), (8, 1.0), (10, 1.0)]})
    (folder / "curve.json").write_text(json.dumps(curve))
    record = {"key": cells[0].key, "benchmark": bench.name, "dense_seed": 0, "dense_fingerprint": fingerprint,
              "method": "adapmtl", "cpu_seconds": 60.0, "delta_t": 7.5}  # fmt: skip
    paths.results.mkdir()
    _results(paths.results / "quality-test-400.json", [record])
    plan = quality.build_plan(_args(tmp_path), paths)
    assert plan.done == {cells[0].key: record}
    assert [c.key for c in plan.pending()] == [cells[1].key]
    # the results file written from this plan carries the fingerprint, so the next checkout can check it
    out = quality.results_file(plan, paths, _args(tmp_path))
    assert out["benchmarks"][0]["dense_fingerprints"] == {"0": fingerprint}
    assert out["runs"][0]["delta_t"] == 7.5 and "partial" in out


def test_a_test_run_off_the_frozen_plan_cannot_overwrite_the_frozen_table(tmp_path: Path) -> None:
    import pytest

    args = ["--cache", str(tmp_path / "c"), "--results", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match="needs --tag NAME"):
        quality.main([*args, "--rows", "adapmtl"])
    with pytest.raises(SystemExit, match="--steps"):
        quality.main([*args, "--steps", "100"])
    with pytest.raises(SystemExit, match="--bench"):
        quality.main([*args, "--bench", "resnet"])
    assert not (tmp_path / "r").exists()  # refused before anything was written


def _scenes(root: Path, content: bytes) -> Path:
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train" / "0.npy").write_bytes(content)
    return root


def test_a_committed_dense_checkpoint_is_restored_only_onto_the_scenes_it_was_trained_on(tmp_path: Path) -> None:
    import pytest

    scenes = _scenes(tmp_path / "scenes", b"abc")
    trained = tmp_path / "trained"
    _save(trained / "model.pt", 1.0)
    (trained / "curve.json").write_text("{}")
    stored = tmp_path / "store" / "dense0"
    committed.store_dense(trained, stored, scenes)
    assert not committed.restore_dense(tmp_path / "nothing", tmp_path / "c0", scenes)  # nothing committed
    assert committed.restore_dense(stored, tmp_path / "c1", scenes)
    assert committed.dense_fingerprint(tmp_path / "c1" / "model.pt") == committed.dense_fingerprint(
        trained / "model.pt"
    )
    _scenes(scenes, b"abd")  # this machine generated other scenes: the committed cells are not its computation
    with pytest.raises(SystemExit, match="differ from those the committed dense checkpoint"):
        committed.restore_dense(stored, tmp_path / "c2", scenes)
    assert not (tmp_path / "c2").exists()
    _scenes(scenes, b"abc")
    _save(stored / "model.pt", 2.0)  # a damaged committed file
    with pytest.raises(SystemExit, match="does not match its recorded fingerprint"):
        committed.restore_dense(stored, tmp_path / "c3", scenes)


def test_ensure_dense_takes_the_committed_checkpoint_instead_of_training(tmp_path: Path) -> None:
    paths = quality.Paths(tmp_path / "cache", tmp_path / "results", tmp_path / "store")
    bench = quality.BENCHES["aspp"]
    scenes = _scenes(paths.bench_dir(bench) / "scenes", b"scene")
    (paths.bench_dir(bench) / "data-ready").write_text("ok\n")  # generated already
    trained = tmp_path / "elsewhere"
    _save(trained / "model.pt", 1.0)
    (trained / "curve.json").write_text(json.dumps({"seed": 0}))
    committed.store_dense(trained, paths.stored_dense(bench, 0), scenes)
    folder = quality.ensure_dense(bench, 0, paths)  # would train for minutes without the committed copy
    assert folder == paths.dense(bench, 0)
    assert committed.dense_fingerprint(folder / "model.pt") == committed.dense_fingerprint(trained / "model.pt")
    assert json.loads((folder / "curve.json").read_text()) == {"seed": 0}

"""Data-parallel runs: sharding of the global batch, precision choice, ranks, and real two-process gloo runs.

The two-process runs start two Python processes with torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and a ``file://`` rendezvous under ``tmp_path`` (no TCP port), on the CPU with gloo.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.jobs.prune import run_prune
from adapmtl_cli.train.batches import EpochSampler, check_batch_size, shard
from adapmtl_cli.train.device import autocast_for
from adapmtl_cli.train.distributed import (
    INIT_METHOD_ENV,
    SINGLE,
    World,
    agree,
    backend_for,
    mark_rank_copy,
    rank_device,
    reports_error,
    run_on_main,
    world_from_env,
)
from adapmtl_cli.train.loop import autocast_dtype, train_batches, uses_channels_last

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, TARGET, interrupt_at, prune_config, read_metrics, read_report  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


# --- sharding --------------------------------------------------------------------------------------


def _ids(n: int, batch: int, start: int, count: int, world: World = SINGLE) -> list[list[int]]:
    batches = train_batches(TensorDataset(torch.arange(n)), batch, seed=3, start_step=start, world=world)
    return [b[0].tolist() for b in itertools.islice(batches, count)]


def test_shard_splits_each_global_batch_into_disjoint_slices() -> None:
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0)).tolist()
    parts = [shard(order, 6, rank, 3) for rank in range(3)]
    assert [len(p) for p in parts] == [6, 6, 6]  # 3 complete global batches of 6; the last 5 samples dropped
    for k in range(3):
        global_batch = order[6 * k : 6 * k + 6]
        slices = [p[2 * k : 2 * k + 2] for p in parts]
        assert [i for s in slices for i in s] == global_batch
    assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2])


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("start", [0, 3, 7])
def test_ranks_together_see_the_single_process_batches(world_size: int, start: int) -> None:
    """Step k's global batch is the same for any world size, from the start and after a resume at ``start``."""
    single = _ids(22, 4, start, 12)  # 5 batches per epoch: crosses two epoch boundaries
    ranks = [_ids(22, 4, start, 12, World(r, world_size, r)) for r in range(world_size)]
    for k, batch in enumerate(single):
        assert all(len(r[k]) == 4 // world_size for r in ranks)
        assert [i for r in ranks for i in r[k]] == batch


def test_epoch_sampler_length_counts_what_it_yields() -> None:
    for rank in (0, 1):
        sampler = EpochSampler(23, seed=1, epoch=2, offset=4, global_batch=6, rank=rank, world_size=2)
        assert len(list(sampler)) == len(sampler) == 9  # (23 - 4) // 6 = 3 global batches of 3 per rank


def test_batch_size_must_split_over_the_ranks() -> None:
    check_batch_size(6, None, World(0, 3))
    with pytest.raises(ConfigError, match="--batch-size 5 does not split over 2 processes.*multiple of 2"):
        check_batch_size(5, None, World(1, 2, 1))
    with pytest.raises(ConfigError, match="does not split"):
        next(train_batches(TensorDataset(torch.arange(10)), 5, seed=0, start_step=0, world=World(0, 2)))


# --- ranks and devices -----------------------------------------------------------------------------


def test_world_from_env() -> None:
    assert world_from_env({}) == SINGLE and not SINGLE.distributed and SINGLE.is_main
    world = world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "1"})
    assert world == World(1, 2, 1) and world.distributed and not world.is_main
    with pytest.raises(ConfigError, match="RANK='x'"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="RANK=2 and WORLD_SIZE=2 do not fit"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_rank_device() -> None:
    cpu = torch.device("cpu")
    assert rank_device(cpu, World(1, 2, 1)) == cpu
    assert rank_device(torch.device("cuda", 3), SINGLE) == torch.device("cuda", 3)  # one process: as asked
    with pytest.raises(ConfigError, match="names one GPU but torchrun started 2 processes"):
        rank_device(torch.device("cuda", 1), World(0, 2))
    with pytest.raises(ConfigError, match="'mps' cannot run distributed"):
        rank_device(torch.device("mps"), World(0, 2))
    if torch.cuda.device_count() < 8:
        with pytest.raises(ConfigError, match="LOCAL_RANK 7 has no GPU"):
            rank_device(torch.device("cuda"), World(7, 8, 7))
    assert (backend_for("cuda"), backend_for("cpu")) == ("nccl", "gloo")


def test_single_process_helpers_just_call() -> None:
    assert run_on_main(SINGLE, lambda: 3) == 3
    assert agree(SINGLE, lambda: "x") == "x"
    error = ConfigError("boom")
    assert reports_error(error)
    assert mark_rank_copy(error) is error and not reports_error(error)


# --- precision -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "device", "bf16", "expected"),
    [
        ("auto", "cpu", None, None),
        ("fp32", "cpu", None, None),
        ("bf16", "cpu", None, torch.bfloat16),
        ("auto", "cuda", True, torch.bfloat16),
        ("auto", "cuda", False, torch.float16),
        ("bf16", "cuda", True, torch.bfloat16),
        ("fp16", "cuda", True, torch.float16),
        ("fp32", "cuda", True, None),
        ("auto", "mps", None, None),
    ],
)
def test_autocast_dtype(precision: str, device: str, bf16: bool | None, expected: torch.dtype | None) -> None:
    assert autocast_dtype(precision, device, bf16_supported=bf16) == expected


@pytest.mark.parametrize(
    ("precision", "device", "bf16", "message"),
    [
        ("fp16", "cpu", None, "--precision fp16 is not supported on cpu"),
        ("bf16", "mps", None, "--precision bf16 is not supported on mps"),
        ("bf16", "cuda", False, "this GPU has no bfloat16 support; pass --precision fp16 or fp32"),
        ("fp8", "cpu", None, "--precision 'fp8' is not one of auto, fp32, bf16, fp16"),
    ],
)
def test_autocast_dtype_refuses(precision: str, device: str, bf16: bool | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        autocast_dtype(precision, device, bf16_supported=bf16)


def test_cpu_autocast_contexts() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_for(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), "auto"):
        assert (a @ b).dtype == torch.float32


def test_channels_last_only_for_conv_models_on_cuda() -> None:
    conv, linear = nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.Linear(3, 4))
    assert uses_channels_last(conv, torch.device("cuda"))
    assert not uses_channels_last(conv, torch.device("cpu"))
    assert not uses_channels_last(linear, torch.device("cuda"))


# --- two real processes (gloo on the CPU) ----------------------------------------------------------

RUNNER = '''
"""One rank of a test run: saves this rank's trained state, then runs the CLI or the library call."""
import faulthandler, json, os, sys
from pathlib import Path

import torch

from adapmtl_cli.jobs import prune as pipeline

faulthandler.enable()  # a crash in C++ (gloo) prints where Python was
rank, out = int(os.environ["RANK"]), Path(os.environ["TEST_OUT"])
fail_rank = int(os.environ.get("TEST_FAIL_RANK", "-1"))
real_finetune = pipeline.finetune


def finetune(pruning, *args, **kwargs):
    pruner = pruning.pruner
    if rank == fail_rank:
        after = pruner.after_step_

        def failing(step):
            if step == 3:
                raise RuntimeError("injected failure on one rank")
            return after(step)

        pruner.after_step_ = failing
    info = real_finetune(pruning, *args, **kwargs)
    torch.save({k: v.detach().cpu().clone() for k, v in pruner.module.state_dict().items()}, out / f"rank{rank}.pt")
    return info


pipeline.finetune = finetune
if sys.argv[1] == "cli":
    from adapmtl_cli.cli.app import main

    sys.argv = ["adapmtl", *sys.argv[2:]]
    main()
else:
    from adapmtl_cli.config import make_prune_config
    from adapmtl_cli.train.distributed import reports_error

    try:
        pipeline.run_prune(make_prune_config(**json.loads(sys.argv[2])))
        result = {"ok": True}
    except BaseException as exc:
        result = {"ok": False, "type": type(exc).__name__, "message": str(exc), "reported": reports_error(exc)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    sys.exit(0 if result["ok"] else 2)
'''


def _launch(tmp_path: Path, args: list[str], *, fail_rank: int = -1) -> list[subprocess.CompletedProcess[str]]:
    """Run the runner as ranks 0 and 1 side by side; return both (stdout/stderr captured)."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    out = tmp_path / "ranks"
    out.mkdir(exist_ok=True)
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            INIT_METHOD_ENV: f"file://{tmp_path / 'rendezvous'}",
            "TEST_OUT": str(out),
            "TEST_FAIL_RANK": str(fail_rank),
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(runner), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def _outcomes(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


def _config(checkpoint: Path, scenes: Path, out: Path, **overrides: Any) -> str:
    values = {
        "checkpoint": str(checkpoint),
        "factory": FACTORY,
        "data": "synthetic",
        "data_dir": str(scenes),
        "sparsity": TARGET,
        "steps": 8,
        "batch_size": 4,
        "log_every": 2,
        "save_every": 4,
        "device": "cpu",
        "out": str(out),
        **overrides,
    }
    return json.dumps(values)


@pytest.mark.distributed
def test_two_processes_prune_to_the_target_with_identical_ranks(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    start = time.perf_counter()
    args = ["cli", "prune", str(checkpoint), "--factory", FACTORY, "--data-dir", str(scenes), "--device", "cpu"]
    args += ["--out", str(out), "--sparsity", str(TARGET), "--steps", "8", "--batch-size", "4"]
    args += ["--log-every", "2", "--save-every", "4"]  # not -q: the status lines are checked
    results = _launch(tmp_path, args)
    print(f"two ranks in {time.perf_counter() - start:.1f} s")
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank}: {r.stdout}\n{r.stderr}"
    report = json.loads((out / "report.json").read_text())
    assert abs(report["overall_sparsity"] - TARGET) <= 0.001
    # one run folder, written once: rank 1 neither wrote nor reported progress
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ranks", "run"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]
    assert "fine-tuning 8 steps" in results[0].stdout and "fine-tuning" not in results[1].stdout
    # every rank ends with the same thresholds, weights and buffers, bit for bit
    states = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    assert any(k.startswith("bank.") for k in states[0])
    unequal = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not unequal, unequal[:5]
    saved = torch.load(out / "state" / "latest.pt", weights_only=True)
    assert saved["step"] == 8 and all(torch.equal(saved["model"][k], states[0][k]) for k in states[0])


@pytest.mark.distributed
def test_a_failure_on_one_rank_stops_both_and_is_reported_once(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    results = _launch(tmp_path, ["lib", _config(checkpoint, scenes, tmp_path / "run")], fail_rank=1)
    assert all(r.returncode == 2 or _gloo_teardown_abort(r) for r in results), [r.stderr[-3000:] for r in results]
    assert any(r.returncode == 2 for r in results), [r.stderr[-3000:] for r in results]
    expected = [
        {"ok": False, "type": "TrainingError", "reported": False},  # rank 0 lost its peer: a copy, not printed
        {"ok": False, "type": "RuntimeError", "message": "injected failure on one rank", "reported": True},
    ]
    for rank, result in enumerate(results):
        if result.returncode == 2:
            outcome = json.loads((tmp_path / "ranks" / f"rank{rank}.json").read_text())
            if rank == 0:
                assert outcome.pop("message").startswith("lost contact with another process")
            assert outcome == expected[rank]


def _gloo_teardown_abort(result: subprocess.CompletedProcess[str]) -> bool:
    """gloo's known teardown race: its I/O thread may throw (-> SIGABRT) while a failed rank leaves.

    Upstream (pytorch/gloo#168, horovod#2907): when a peer closes its sockets while this rank's own group is
    being torn down, gloo's event loop can throw outside any operation and abort the process (seen once in CI
    on the rank whose error ended the run: exit status 134 instead of 2). Only an abort from an uncaught C++
    exception is tolerated, and at least one rank must still leave through our error path as expected.
    """
    return result.returncode == -signal.SIGABRT and ("gloo" in result.stderr or "terminate called" in result.stderr)


@pytest.mark.distributed
@pytest.mark.parametrize("case", ["batch_size", "occupied_out"])
def test_a_user_error_stops_every_rank_with_one_message(
    checkpoint: Path, scenes: Path, tmp_path: Path, case: str
) -> None:
    out = tmp_path / "run"
    if case == "occupied_out":  # found by rank 0 alone (it prepares the folder) and handed to rank 1
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        config, expected = _config(checkpoint, scenes, out), "already holds files"
    else:  # found by both ranks for themselves
        config, expected = _config(checkpoint, scenes, out, batch_size=3), "does not split over 2 processes"
    results = _launch(tmp_path, ["lib", config])
    assert [r.returncode for r in results] == [2, 2]
    outcomes = _outcomes(tmp_path)
    assert all(o["type"] == "ConfigError" and expected in o["message"] for o in outcomes), outcomes
    assert outcomes[0]["message"] == outcomes[1]["message"]
    assert [o["reported"] for o in outcomes] == [True, False]
    # nothing written: the user's file is untouched, a folder made for the run is removed again
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] if case == "occupied_out" else not out.exists()


@pytest.mark.distributed
def test_a_single_process_run_resumes_under_two_processes(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    """The global batch order depends on (seed, epoch, step) only, so a run may continue with more processes."""
    run = tmp_path / "run"
    cfg = prune_config(checkpoint, scenes, run, steps=8, save_every=2, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        run_prune(cfg, hooks=interrupt_at(5))  # dies after step 5; the state of step 4 is saved
    results = _launch(tmp_path, ["cli", "resume", str(run)])  # not -q: the status lines are checked
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank}: {r.stdout}\n{r.stderr}"
    assert "resuming from state/latest.pt at step 4" in results[0].stdout
    assert abs(read_report(run).overall_sparsity - TARGET) <= 0.001
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))
    states = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

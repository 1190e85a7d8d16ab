"""Never lose a run: SIGKILL and resume bit-exactly, damaged state files, `adapmtl resume`, divergence rollback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from adapmtl_cli.files.rundir import sidecar
from adapmtl_cli.jobs.prepare import Hooks
from adapmtl_cli.jobs.prune import run_prune

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import (  # noqa: E402
    FACTORY,
    TARGET,
    copy_run,
    invoke,
    prune_config,
    read_metrics,
    read_report,
    snapshot_files,
    user_error,
)

pytest_plugins = ["fixtures_e2e"]

BAD_MODELS = Path(__file__).parents[1] / "bad_models.py"

# The SIGKILL run: long enough that a kill at a random saved step lands well before the end.
KILL_STEPS, KILL_SAVE_EVERY, KILL_SEED = 40, 2, 20240611


def _assert_same_weights(run: Path, reference: Path) -> None:
    got, want = load_file(str(run / "pruned.safetensors")), load_file(str(reference / "pruned.safetensors"))
    assert got.keys() == want.keys()
    unequal = [k for k in want if not torch.equal(got[k], want[k])]
    assert not unequal, f"{len(unequal)} of {len(want)} tensors differ, e.g. {unequal[:3]}"


def _without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# --- SIGKILL at a random step, then resume: bit-exact --------------------------------------------------


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "adapmtl_cli", *(str(a) for a in args)]


def _saved_step(run: Path) -> int | None:
    try:
        return int(torch.load(run / "state" / "latest.pt", weights_only=True)["step"])
    except Exception:  # not written yet, or replaced while we read it
        return None


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    rng = random.Random(KILL_SEED)
    kill_after, delay = rng.randint(4, KILL_STEPS // 2), rng.uniform(0.0, 0.3)
    common = ["--factory", FACTORY, "--data-dir", scenes, "--sparsity", TARGET, "--steps", KILL_STEPS]
    common += ["--batch-size", 4, "--save-every", KILL_SAVE_EVERY, "--log-every", 5, "--device", "cpu", "-q"]
    # One thread each: the reference and the victim run side by side on two cores without OpenMP spin-waits
    # fighting (both use the same setting, so their results stay comparable bit for bit).
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    start = time.perf_counter()
    ref_proc = subprocess.Popen(_cli("prune", checkpoint, "--out", reference, *common), env=env)
    proc = subprocess.Popen(_cli("prune", checkpoint, "--out", victim, *common), env=env)
    try:
        deadline, seen = time.monotonic() + 240, None
        while proc.poll() is None and time.monotonic() < deadline:
            stamp = _mtime(victim / "state" / "latest.pt")
            if stamp != seen:  # read the state only when a new one landed: polling must not slow the run down
                seen, step = stamp, _saved_step(victim)
                if step is not None and step >= kill_after:
                    time.sleep(delay)  # land anywhere: mid-step, mid-save
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.005)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"the run was not killed (exit {proc.returncode}); raise KILL_STEPS"
        killed_at = _saved_step(victim)
        assert killed_at is not None and not (victim / "report.json").exists()
        # Not quiet: the status line names the step it resumed from.
        resumed = subprocess.run(_cli("resume", victim), env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"at step {killed_at}" in resumed.stdout
        assert ref_proc.wait(timeout=300) == 0
    finally:
        for p in (proc, ref_proc):
            if p.poll() is None:
                p.kill()
    seconds = time.perf_counter() - start
    print(f"killed {delay:.2f} s after step {kill_after} was saved (resumed from {killed_at}); {seconds:.1f} s in all")
    _assert_same_weights(victim, reference)
    assert _without_timing(read_metrics(victim)) == _without_timing(read_metrics(reference))
    # The final state's step, task weights and RNG, and the report (but its wall time) are the uninterrupted run's.
    got, want = (torch.load(r / "state" / "latest.pt", weights_only=True) for r in (victim, reference))
    assert got["step"] == want["step"] and got["task_weights"] == want["task_weights"]
    assert torch.equal(got["rng"], want["rng"])
    assert read_report(victim).model_dump(exclude={"wall_seconds"}) == read_report(reference).model_dump(
        exclude={"wall_seconds"}
    )


# --- damaged state files -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "delete_checksum"])
def test_damaged_latest_state_resumes_from_prev_bit_exactly(
    interrupted_run: Path, uninterrupted_run: Path, checkpoint: Path, scenes: Path, tmp_path: Path, damage: str
) -> None:
    run = copy_run(interrupted_run, tmp_path / "run")
    latest = run / "state" / "latest.pt"
    data = latest.read_bytes()
    if damage == "truncate":
        latest.write_bytes(data[: len(data) // 2])
    elif damage == "flip_a_byte":  # in the tensor data: torch.load alone would not notice
        latest.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    else:
        sidecar(latest).unlink()
    messages: list[str] = []
    run_prune(prune_config(checkpoint, scenes, run), resume=True, hooks=Hooks(status=messages.append))
    used = next(m for m in messages if m.startswith("resuming from"))
    assert used.startswith("resuming from state/prev.pt at step 6; not used: latest.pt: ")
    _assert_same_weights(run, uninterrupted_run)
    assert _without_timing(read_metrics(run)) == _without_timing(read_metrics(uninterrupted_run))


def test_no_usable_state_starts_over_and_says_so(
    interrupted_run: Path, uninterrupted_run: Path, checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    run = copy_run(interrupted_run, tmp_path / "run")
    for name in ("latest.pt", "prev.pt"):
        (run / "state" / name).write_bytes(b"garbage")
    messages: list[str] = []
    run_prune(prune_config(checkpoint, scenes, run), resume=True, hooks=Hooks(status=messages.append))
    assert any(m.startswith("no usable saved state (latest.pt: checksum mismatch") for m in messages)
    _assert_same_weights(run, uninterrupted_run)


# --- `adapmtl resume RUN` -------------------------------------------------------------------------------


def test_resume_command_continues_a_moved_run(interrupted_run: Path, uninterrupted_run: Path, tmp_path: Path) -> None:
    """The folder moved since it was written (config.json still names the old --out); stale temp files go."""
    run = copy_run(interrupted_run, tmp_path / "moved" / "elsewhere")
    stale = run / "state" / ".latest.pt.x1y2z3.tmp"
    stale.write_bytes(b"half a state")
    result = invoke("resume", run)  # not quiet: the status lines say where it resumed
    assert result.exit_code == 0, result.output
    assert "resuming from state/latest.pt at step 12" in result.stdout
    assert f"run written to {run}" in result.stdout
    assert not stale.exists()
    _assert_same_weights(run, uninterrupted_run)
    assert not (interrupted_run / "report.json").exists()  # the original folder was not written to


def test_resume_command_on_a_folder_without_a_run(tmp_path: Path) -> None:
    message = user_error(invoke("resume", tmp_path))
    assert "holds no run to resume" in message and str(tmp_path) in message


def test_resume_of_a_trust_pickle_run_needs_the_flag_again(interrupted_run: Path, tmp_path: Path) -> None:
    """A run folder can come from anyone: its config.json alone never turns on unpickling."""
    run = copy_run(interrupted_run, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "trust_pickle": True}))
    before = snapshot_files(run)
    for args in (["resume", run, "-q"], ["prune", cfg["checkpoint"], "--out", run, "--data-dir", "x", "--resume"]):
        message = user_error(invoke(*args))
        assert "--trust-pickle" in message and "runs code" in message
    after = snapshot_files(run)
    assert after == before


# --- divergence: roll back, halve the learning rates, retry, then stop --------------------------------


def _bad_model_run(factory: str, scenes: Path, tmp_path: Path, *extra: object) -> tuple[Path, Any]:
    import bad_models

    ckpt = tmp_path / "model.pt"
    torch.save(getattr(bad_models, factory)().state_dict(), ckpt)
    out = tmp_path / "run"
    args = ["prune", ckpt, "--factory", f"{BAD_MODELS}:{factory}", "--data-dir", scenes, "--out", out]
    args += ["--steps", 8, "--batch-size", 4, "--log-every", 1, "--device", "cpu", *extra]  # status lines shown
    return out, invoke(*args)


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("nan_loss_once", "loss of task 'segmentation', 'depth', 'normal' became nan at step 3"),
        ("nan_weights_once", "parameter 'gain' became non-finite in optimizer step 3"),
    ],
)
def test_a_transient_divergence_is_rolled_back_and_the_run_finishes(
    scenes: Path, tmp_path: Path, factory: str, reason: str
) -> None:
    out, result = _bad_model_run(factory, scenes, tmp_path, "--save-every", 2)
    assert result.exit_code == 0, result.output
    assert f"{reason}; rolled back to step 2 and halved the learning rates (rollback 1 of at most 3)" in result.stdout
    records = read_metrics(out)
    events = [r for r in records if r.get("event") == "rollback"]
    assert events == [
        {
            "event": "rollback",
            "step": 2,
            "failed_step": 3,
            "reason": reason,
            "lrs": [5e-05, 0.0],  # the thresholds move by the marginal rule, not Adam
            "attempt": 1,
            "max_attempts": 3,
        }
    ]
    # the rolled-back step 3 was logged before the failure check only if it completed: it did not
    assert [r["step"] for r in records if "event" not in r] == list(range(1, 9))
    assert abs(read_report(out).overall_sparsity - TARGET) <= 0.001
    state = torch.load(out / "state" / "latest.pt", weights_only=True)
    assert state["rollbacks"] == 1
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [5e-05, 0.0]


def test_a_persistent_divergence_stops_after_three_rollbacks_and_keeps_the_saved_state(
    scenes: Path, tmp_path: Path
) -> None:
    out, result = _bad_model_run("nan_loss_forever", scenes, tmp_path, "--save-every", 2)
    message = user_error(result)
    assert message.startswith("loss of task 'segmentation', 'depth', 'normal' became nan at step 3; rolled back")
    assert "3 times" in message and "--lr" in message
    events = [r for r in read_metrics(out) if r.get("event") == "rollback"]
    assert [e["attempt"] for e in events] == [1, 2, 3]
    assert [e["lrs"][0] for e in events] == [5e-05, 2.5e-05, 1.25e-05]
    # nothing already written is lost: the last good state (step 2) is intact and verified
    state = torch.load(out / "state" / "latest.pt", weights_only=True)
    assert state["step"] == 2 and (out / "state" / "latest.pt.sha256").is_file()
    assert (out / "config.json").is_file() and not (out / "report.json").exists()

"""Resume rebuilds the same run: every random stream, the final state and the report, whatever the stop point.

The model draws from every global stream in its forward (dropout from torch's, a jitter from numpy's and from
Python's ``random``) and the dataset draws from all three for every item (augmentation that does not use
``set_epoch``), so a stream that does not resume exactly changes the weights, the state's RNG or the log.
Covered: an interruption in the middle of an epoch (with and without loader worker processes), a run stopped
after its final state was saved (killed during the final evaluation or save), a finished run resumed; and what
the interruption says (``adapmtl resume RUN``, the saved step).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from noisy_run import STEPS, run_noisy, write_noisy_inputs
from safetensors.torch import load_file

from adapmtl_cli.config import RunReport
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.jobs.prepare import Hooks
from adapmtl_cli.jobs.prune import resume_prune


def _interrupt_after(step: int) -> Hooks:
    def on_step(info: Any) -> None:
        if info.step == step:
            raise KeyboardInterrupt  # a crash: nothing saved past the last save

    return Hooks(on_step=on_step)


def _same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _without_clock(report: RunReport) -> dict[str, Any]:
    return report.model_dump(exclude={"wall_seconds"})


def _log(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines if line]


def _assert_same_run(run: Path, reference: Path) -> None:
    got, want = load_file(str(run / "pruned.safetensors")), load_file(str(reference / "pruned.safetensors"))
    _same(got, want, "weights")
    state = torch.load(run / "state" / "latest.pt", weights_only=True)
    _same(
        {k: v for k, v in state.items() if k != "elapsed"},
        {k: v for k, v in torch.load(reference / "state" / "latest.pt", weights_only=True).items() if k != "elapsed"},
    )
    assert _log(run) == _log(reference)
    assert _without_clock(RunReport.model_validate_json((run / "report.json").read_text())) == _without_clock(
        RunReport.model_validate_json((reference / "report.json").read_text())
    )


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """The inputs and one uninterrupted run of the noisy model on the noisy data."""
    root = tmp_path_factory.mktemp("noisy")
    inputs = write_noisy_inputs(root)
    run_noisy(inputs, root / "reference", workers=0)
    return inputs, root / "reference"


@pytest.mark.parametrize("workers", [0, 1])
def test_an_interruption_mid_epoch_resumes_every_random_stream_exactly(
    noisy: tuple[dict[str, str], Path], tmp_path: Path, workers: int
) -> None:
    inputs, reference = noisy
    if workers:  # worker processes read the items: the same draws as in the main process
        reference = tmp_path / "reference"
        run_noisy(inputs, reference, workers)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        run_noisy(inputs, run, workers, _interrupt_after(5))
    assert str(info.value) == f"interrupted; the state saved at step 4 is kept: continue with `adapmtl resume {run}`"
    messages: list[str] = []
    resume_prune(run, hooks=Hooks(status=messages.append))
    assert "resuming from state/latest.pt at step 4" in messages
    _assert_same_run(run, reference)


@pytest.mark.parametrize("lost", [("report.json",), ("report.json", "pruned.safetensors"), ()])
def test_a_run_stopped_after_its_final_state_rebuilds_the_same_report(
    noisy: tuple[dict[str, str], Path], tmp_path: Path, lost: tuple[str, ...]
) -> None:
    """Killed during the final evaluation or save (the final state is on disk), or resumed when finished."""
    inputs, reference = noisy
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for name in lost:
        (run / name).unlink()
    messages: list[str] = []
    resume_prune(run, hooks=Hooks(status=messages.append))
    assert f"run already finished {STEPS} steps; rebuilding its outputs" in messages
    _assert_same_run(run, reference)


def test_the_report_of_a_resumed_run_counts_the_earlier_training_time(
    noisy: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    _, reference = noisy
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    state = torch.load(run / "state" / "latest.pt", weights_only=True)
    report = resume_prune(run)
    assert report.wall_seconds >= state["elapsed"] > 0


def test_an_interruption_before_any_state_was_saved_says_what_resume_does(
    noisy: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    inputs, _ = noisy
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        run_noisy(inputs, run, 0, _interrupt_after(1))
    assert str(info.value) == (
        f"interrupted before the first state was saved; `adapmtl resume {run}` starts again from step 0"
    )


@pytest.mark.parametrize("damage", [b'{"kind": {"accuracy": 0.', b"\xff\xfe", b'{"kind": {}}', b"[]"])
def test_damaged_dense_metrics_are_scored_again_on_resume(
    noisy: tuple[dict[str, str], Path], tmp_path: Path, damage: bytes
) -> None:
    """Truncated, not UTF-8, incomplete or not an object: the dense model is scored again, to the same numbers."""
    _, reference = noisy
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "report.json").unlink()
    (run / "dense_metrics.json").write_bytes(damage)
    messages: list[str] = []
    resume_prune(run, hooks=Hooks(status=messages.append))
    assert any("dense_metrics.json" in m and m.endswith("scoring the dense model again") for m in messages), messages
    assert json.loads((run / "dense_metrics.json").read_text()) == json.loads(
        (reference / "dense_metrics.json").read_text()
    )
    _assert_same_run(run, reference)


@pytest.mark.parametrize(
    ("line", "expected"),
    [(b"[1, 2]", "line 2 of training log"), (b'{"step": "3"}', "record 2 of training log")],
)
def test_a_log_line_that_is_not_a_step_record_stops_resume_with_its_line(
    noisy: tuple[dict[str, str], Path], tmp_path: Path, line: bytes, expected: str
) -> None:
    _, reference = noisy
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(lines[0] + line + b"\n" + b"".join(lines[1:]))
    with pytest.raises(ConfigError) as info:
        resume_prune(run)
    assert str(info.value).startswith(expected) and "metrics.jsonl" in str(info.value)
    assert "remove that line" in str(info.value)


def test_an_interrupted_resume_says_the_saved_state_is_kept(noisy: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    _, reference = noisy
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    def status(message: str) -> None:
        if message.startswith("loading"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        resume_prune(run, hooks=Hooks(status=status))
    assert str(info.value) == (
        f"interrupted before the run started; its saved state is kept: continue with `adapmtl resume {run}`"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

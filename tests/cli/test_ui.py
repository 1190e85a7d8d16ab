"""The live view of ``prune``: the terminal bar with loss/sparsity lines, plain lines, JSON lines, TensorBoard."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pytest
from rich.console import Console

from adapmtl_cli.cli import ui
from adapmtl_cli.train.events import StepInfo, step_scalars

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, invoke, read_metrics, read_report, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

STEPS, LOG_EVERY = 4, 2


def _info(step: int, logged: bool) -> StepInfo:
    return StepInfo(
        step=step,
        total_steps=10,
        loss=1.5,
        task_losses={"segmentation": 1.25, "depth": 0.25},
        task_weights={"segmentation": 0.8, "depth": 1.2},
        target=0.5,
        sparsity=0.45,
        group_sparsity={"backbone": 0.5, "head:depth": 0.25} if logged else {},
        thresholds={"backbone": 0.01, "head:depth": 0.02} if logged else {},
        seconds=2.0 * step,
    )


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, scenes: Path) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("live") / "run"
    args = ("--steps", STEPS, "--log-every", LOG_EVERY, "--batch-size", 4, "--eval-batches", 1, "--device", "cpu")
    result = invoke(
        "prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, "--log-format", "jsonl", *args
    )
    return out, result


def test_jsonl_every_stdout_line_is_json(jsonl_run: tuple[Path, object]) -> None:
    out, result = jsonl_run
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # type: ignore[attr-defined]
    events = [x["event"] for x in lines]
    assert events[0] == "status" and events[-1] == "done"
    steps = [x for x in lines if x["event"] == "step"]
    assert [x["step"] for x in steps] == [r["step"] for r in read_metrics(out)] == [2, 4]
    for x, record in zip(steps, read_metrics(out), strict=True):
        assert x["total_steps"] == STEPS and x["eta_seconds"] >= 0
        assert {k: x[k] for k in record} == record  # the same numbers metrics.jsonl has
    assert [x["split"] for x in lines if x["event"] == "eval"] == ["dense", "pruned"]
    assert lines[-1]["run"] == str(out)
    assert lines[-1]["report"] == json.loads((out / "report.json").read_text())


def test_text_off_a_terminal_prints_loss_weights_and_sparsity_per_component(
    tmp_path: Path, checkpoint: Path, scenes: Path
) -> None:
    out = tmp_path / "run"
    args = ("--steps", STEPS, "--log-every", LOG_EVERY, "--batch-size", 4, "--eval-batches", 1, "--device", "cpu")
    result = invoke("prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, *args)
    assert result.exit_code == 0, result.output
    lines = [x for x in result.stdout.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == [f"{i}/{STEPS}" for i in range(1, STEPS + 1)]
    last = lines[-1]
    assert "loss " in last and "segmentation " in last and "×" in last  # per-task loss × weight
    assert "backbone " in last and "head:depth " in last and "ETA 0 s" in last
    assert f"achieved {read_report(out).overall_sparsity:.2%}" in result.stdout


def test_quiet_prints_no_progress(tmp_path: Path, checkpoint: Path, scenes: Path) -> None:
    out = tmp_path / "run"
    args = ("--steps", 2, "--batch-size", 4, "--eval-batches", 1, "--device", "cpu", "-q", "--log-format", "jsonl")
    result = invoke("prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, *args)
    assert result.exit_code == 0, result.output
    assert '"event": "step"' not in result.stdout and '"event": "done"' not in result.stdout


def test_live_view_on_a_terminal_shows_the_details(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    monkeypatch.setattr(ui, "console", fake)
    with ui.TrainingProgress() as progress:
        assert progress.interactive
        progress.on_step(_info(5, logged=True))
        progress.on_step(_info(6, logged=False))
        progress.on_eval("pruned", 1, 1)
    text = fake.file.getvalue()  # type: ignore[attr-defined]
    assert "6/10" in text and "ETA" in text
    assert "loss 1.5000 = segmentation 1.2500×0.80 + depth 0.2500×1.20" in text
    assert "sparsity 45.0% (target 50.0%)  backbone 50.0%  head:depth 25.0%" in text
    assert "eval pruned" in text


def test_step_summary_without_groups() -> None:
    loss, sparsity = ui.step_summary(_info(1, logged=False), {})
    assert loss == "loss 1.5000 = segmentation 1.2500×0.80 + depth 0.2500×1.20"
    assert sparsity == "sparsity 45.0% (target 50.0%)"


# --- TensorBoard --------------------------------------------------------------------------------------


def test_tensorboard_missing_is_one_line_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path, scenes: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    args = ("--steps", 2, "--batch-size", 4, "--device", "cpu", "--tensorboard", tmp_path / "tb")
    message = user_error(invoke("prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, *args))
    assert "needs the tensorboard package" in message and "pip install tensorboard" in message
    assert not out.exists()


def test_tensorboard_gets_the_logged_scalars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    written: list[tuple[str, float, int]] = []
    closed: list[str] = []

    class SummaryWriter:
        def __init__(self, log_dir: str) -> None:
            closed.append("open " + log_dir)

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            closed.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    with ui.TrainingProgress(quiet=True, tensorboard=tmp_path / "tb") as progress:
        progress.on_step(_info(1, logged=False))
        progress.on_step(_info(2, logged=True))
    assert closed == [f"open {tmp_path / 'tb'}", "closed"]
    assert {(t, v) for t, v, _ in written} == set(step_scalars(_info(2, logged=True)).items())
    assert {s for _, _, s in written} == {2}
    tags = {t for t, _, _ in written}
    assert {"loss/total", "loss/depth", "task_weight/segmentation", "sparsity/overall", "sparsity/backbone"} <= tags
    assert "threshold/head:depth" in tags

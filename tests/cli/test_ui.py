"""The live view of ``prune``: the terminal bar with loss/sparsity lines, plain lines, JSON lines, TensorBoard."""

from __future__ import annotations

import io
import json
import sys
import textwrap
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
    # The components were measured at step 5, the overall figure at step 6: the line says so.
    assert "sparsity 45.0% (target 50.0%)  at step 5:  backbone 50.0%  head:depth 25.0%" in text
    assert "eval pruned" in text


def test_step_summary_marks_component_figures_from_an_earlier_step() -> None:
    groups = {"backbone": 0.5}
    assert ui.step_summary(_info(5, logged=True), groups, 5)[1] == "sparsity 45.0% (target 50.0%)  backbone 50.0%"
    stale = ui.step_summary(_info(6, logged=False), groups, 5)[1]
    assert stale == "sparsity 45.0% (target 50.0%)  at step 5:  backbone 50.0%"


def test_quiet_prints_no_status_lines(tmp_path: Path, checkpoint: Path, scenes: Path) -> None:
    out = tmp_path / "run"
    args = ("--steps", 2, "--batch-size", 4, "--eval-batches", 1, "--device", "cpu", "-q")
    result = invoke("prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, *args)
    assert result.exit_code == 0, result.output
    assert "•" not in result.stdout
    assert result.stdout.splitlines() == [
        f"✓ run written to {out}  (next: adapmtl report {out}; adapmtl export {out} --onnx)"
    ]


def test_show_off_a_terminal_prints_wide_tables_whole_and_plain(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.table import Table

    table = Table(title="wide", title_justify="left")
    cells = [f"{i}" * 30 for i in range(6)]
    for i in range(6):
        table.add_column(f"column {i}", style="bold red")
    table.add_row(*cells)
    ui.show(table)
    text = capsys.readouterr().out
    assert all(cell in text for cell in cells)  # rich alone cuts them at 80 columns off a terminal
    assert "…" not in text and "\x1b[" not in text


def test_phase_progress_off_a_terminal_prints_about_ten_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with ui.TrainingProgress() as progress:
        for done in range(0, 101):
            progress.on_progress("dense", done, 100)
        progress.on_progress("export", 0, 1)
        progress.on_progress("export", 1, 1)
    lines = capsys.readouterr().out.splitlines()
    assert [x.split()[2] for x in lines] == [f"{i}/100" for i in (1, *range(10, 101, 10))]
    assert all(x.startswith("dense training ") for x in lines)


def test_phase_progress_on_a_terminal_draws_a_bar_per_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    monkeypatch.setattr(ui, "console", fake)
    with ui.TrainingProgress() as progress:
        progress.on_progress("scenes", 3, 4)
        progress.on_progress("export", 0, 1)
    text = fake.file.getvalue()  # type: ignore[attr-defined]
    assert "generating scenes" in text and "3/4" in text and "export" in text


def test_quiet_shows_no_phase_progress(capsys: pytest.CaptureFixture[str]) -> None:
    with ui.TrainingProgress(quiet=True) as progress:
        progress.status("hidden")
        progress.on_progress("dense", 5, 10)
    assert capsys.readouterr().out == ""


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


def test_every_command_prints_whole_tables_into_a_pipe(
    pruned_run: object, checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    from fixtures_e2e import copy_run

    run = pruned_run.path  # type: ignore[attr-defined]
    runs = [run, *(copy_run(run, tmp_path / f"copy{i}" / run.name) for i in range(5))]
    compare = invoke("report", *runs, "--compare")
    assert compare.exit_code == 0, compare.output
    achieved = f"{read_report(run).overall_sparsity:.2%}"
    row = next(x for x in compare.stdout.splitlines() if "achieved sparsity" in x)
    assert row.count(achieved) == len(runs)  # rich alone cut this 7-column table at 80 columns
    shown = invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--no-estimate")
    assert shown.exit_code == 0, shown.output
    for text in (compare.stdout, shown.stdout, invoke("report", run, "--layers").stdout):
        assert "…" not in text and "\x1b[" not in text


CHATTY_MODEL = """
from noisy_net import build as _build


def build():
    model = _build()
    model.register_forward_pre_hook(lambda module, args: print("forward called"))
    return model
"""

CHATTY_DATA = """

class Chatty(Noisy):
    def __getitem__(self, i):
        print("reading item", i)
        return super().__getitem__(i)


def dataset(root, split):
    return Chatty(12 if split == "train" else 4, 0 if split == "train" else 1)
"""


def test_user_code_printing_during_the_job_keeps_stdout_machine_readable(tmp_path: Path) -> None:
    """A model whose ``forward`` prints and a dataset that prints per item: every stdout line is still JSON."""
    from noisy_run import PLUGIN, write_noisy_inputs

    inputs = write_noisy_inputs(tmp_path)
    (tmp_path / "chatty.py").write_text(CHATTY_MODEL)
    (tmp_path / "chatty_data.py").write_text(textwrap.dedent(PLUGIN) + CHATTY_DATA)
    data = tmp_path / "chatty_data.py"
    common = ("--factory", f"{tmp_path / 'chatty.py'}:build", "--data", data, "--data-dir", tmp_path)
    out = tmp_path / "run"
    args = ("--out", out, "--steps", 2, "--batch-size", 4, "--eval-batches", 1, "--device", "cpu")
    result = invoke("prune", inputs["checkpoint"], *common, *args, "--log-format", "jsonl")
    assert result.exit_code == 0, result.output
    events = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert events[-1] == "done" and "step" in events
    assert "forward called" in result.stderr and "reading item" in result.stderr
    inspected = invoke("inspect", inputs["checkpoint"], *common, "--json")
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.stdout)["tasks"] == ["kind", "size"]
    assert "forward called" in inspected.stderr


def test_own_stdout_sends_other_prints_to_stderr_and_restores(capsys: pytest.CaptureFixture[str]) -> None:
    before = sys.stdout
    with ui.own_stdout():
        print("user code")
        ui.plain('{"ours": 1}')
        with ui.own_stdout():  # nested: still the outer stdout
            ui.plain('{"ours": 2}')
    assert sys.stdout is before and ui.console.file is sys.stdout
    captured = capsys.readouterr()
    assert captured.out == '{"ours": 1}\n{"ours": 2}\n'
    assert captured.err == "user code\n"

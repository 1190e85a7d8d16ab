"""``adapmtl demo``: progress for every phase, what Ctrl-C keeps in each, and a dense model that learned its tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapmtl_cli.jobs import demo
from adapmtl_cli.report.chance import CHANCE_MARGIN, beats_chance, constant_metrics

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import invoke  # noqa: E402


@pytest.fixture
def tiny_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo at a size that runs in seconds (what it does, not what it learns)."""
    monkeypatch.setattr(demo, "DEMO_SIZE", (32, 48))
    monkeypatch.setattr(demo, "DEMO_SCENES", (16, 8))


class _Stop:
    """An ``on_progress`` that records every call and presses Ctrl-C at one of them."""

    def __init__(self, phase: str | None = None, at: int = 0) -> None:
        self.phase, self.at = phase, at
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.calls.append((phase, done, total))
        if phase == self.phase and done == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize(("phase", "at"), [("scenes", 3), ("dense", 2)])
def test_ctrl_c_says_what_each_phase_kept(tiny_demo: None, tmp_path: Path, phase: str, at: int) -> None:
    out = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt) as info:
        demo.run_demo(out, steps=2, dense_steps=4, on_progress=_Stop(phase, at))
    message = str(info.value)
    assert message == demo.interrupted_message(phase, out)
    assert "--resume" not in message and f"adapmtl demo --out {out} --overwrite" in message
    assert not (out / "model.pt").exists()  # the dense model is saved only once trained
    assert sorted(p.name for p in out.iterdir()) == ["scenes"]
    if phase == "dense":
        assert f"the scenes in {out / 'scenes'} are kept" in message


def test_ctrl_c_messages_name_the_command_that_goes_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert f"`adapmtl resume {run}`, then `adapmtl export {run} --onnx`" in demo.interrupted_message("prune", tmp_path)
    assert f"{tmp_path / 'model.pt'}" in demo.interrupted_message("prune", tmp_path)
    assert f"`adapmtl export {run} --onnx`" in demo.interrupted_message("export", tmp_path)


def test_the_command_prints_the_phases_message_and_exits_130(
    tiny_demo: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupted(*args: object, **kwargs: object) -> torch.nn.Module:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train_dense", interrupted)
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "-q")
    assert result.exit_code == 130
    assert result.stderr.strip() == f"Error: {demo.interrupted_message('dense', out)}"


@pytest.mark.onnx
def test_every_phase_reports_progress(tiny_demo: None, tmp_path: Path) -> None:
    progress = _Stop()
    steps: list[int] = []
    result = demo.run_demo(
        tmp_path / "demo", steps=3, dense_steps=5, on_progress=progress, on_step=lambda i: steps.append(i.step)
    )
    calls = progress.calls
    assert [c for c in calls if c[0] == "scenes"] == [("scenes", i, 24) for i in range(25)]
    assert [c for c in calls if c[0] == "dense"] == [("dense", i, 5) for i in range(6)]
    assert [c for c in calls if c[0] == "export"] == [("export", 0, 1), ("export", 1, 1)]
    assert steps == [1, 2, 3]  # the pruning loop reports through on_step, as for `prune`
    assert (result.run / "export" / "model.onnx").is_file()


@pytest.mark.slow
def test_the_demos_dense_model_learns_every_task(tmp_path: Path) -> None:
    """The demo's sizes are small, but not so small that the dense model stays at chance (about a minute)."""
    from adapmtl_cli.data import get_dataset
    from adapmtl_cli.data.synth.scenes import generate_scenes
    from adapmtl_cli.model.outputs import OutputMapping
    from adapmtl_cli.train.evaluate import evaluate

    root = tmp_path / "scenes"
    train_n, val_n = demo.DEMO_SCENES
    generate_scenes(root, train=train_n, val=val_n, size=demo.DEMO_SIZE, seed=0)
    adapter = get_dataset("synthetic")
    tasks = list(adapter.tasks(root))
    train, val = adapter.open(root, "train"), adapter.open(root, "val")
    model = demo.train_dense(root, demo.DENSE_STEPS)
    mapping = OutputMapping(paths={t.name: (t.name,) for t in tasks}, how="names")
    dense = evaluate(model, val, tasks, mapping, torch.device("cpu"))
    scores = beats_chance(dense, constant_metrics(train, val, tasks), {t.name: t for t in tasks})
    assert set(scores) == {t.name for t in tasks}
    assert all(score > 4 * CHANCE_MARGIN for score in scores.values()), scores


def test_on_a_busy_machine_the_demo_trains_with_one_thread(
    tiny_demo: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[int] = []

    def record(*args: object, **kwargs: object) -> torch.nn.Module:
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (8.0, 8.0, 8.0))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(demo, "train_dense", record)
    threads = torch.get_num_threads()
    result = invoke("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 130 and seen == [1]
    assert torch.get_num_threads() == threads  # restored when the command ends
    assert "• the machine is busy (load average 8.0 on 2 cores): training with one thread" in result.stdout


def test_an_idle_machine_or_a_chosen_thread_count_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapmtl_cli.cli.demo_command import busy_machine

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert busy_machine() is None
    monkeypatch.setattr("os.getloadavg", lambda: (9.0, 9.0, 9.0))
    assert busy_machine() is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert busy_machine() is None

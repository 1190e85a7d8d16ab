"""Session-scoped end-to-end assets shared by the CLI, pipeline, deploy, engine and report tests.

Loaded with ``pytest_plugins = ["fixtures_e2e"]`` from each test module (``conftest.py`` puts this folder on
``sys.path``). Everything expensive happens once per session: a tiny generated dataset, a tiny DeepLab
checkpoint, ONE short ``adapmtl prune`` run through the CLI (reused by the report, export and acceptance
tests), its ``adapmtl export --onnx``, and an uninterrupted / interrupted pair of runs for the resume tests.
Tests that write into a run folder work on a copy (``copy_run``).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner, Result

from adapmtl_cli.cli.app import app
from adapmtl_cli.config import PruneConfig, RunReport, make_prune_config
from adapmtl_cli.data.synth.scenes import generate_scenes
from adapmtl_cli.jobs.prepare import Hooks
from adapmtl_cli.jobs.prune import run_prune
from adapmtl_cli.models import deeplab_resnet_tiny

FACTORY = "adapmtl_cli.models:deeplab_resnet_tiny"
TASKS = ("segmentation", "depth", "normal")
COMPONENTS = ("backbone", "head:segmentation", "head:depth", "head:normal")
TARGET = 0.9
# Wide enough that no table cell of the report is truncated; fixed so the output does not depend on the terminal.
CLI_ENV = {"COLUMNS": "200"}

# The one shared prune: small enough for CI, long enough that the sparsity ramp ends and is held.
PRUNE_ARGS = ("--sparsity", "0.9", "--steps", "30", "--batch-size", "4", "--log-every", "5", "--save-every", "10")
# The resume pair: the interruption lands between two saves (state saved at 12, KeyboardInterrupt at 13).
RESUME_STEPS, RESUME_SAVE_EVERY, INTERRUPT_AT = 24, 6, 13

FACTORY_SOURCE = '''
"""Factories for the error tests: models whose outputs do not fit the tasks or stop being finite."""

import torch
from torch import nn

from adapmtl_cli.models import deeplab_resnet_tiny


class FiveChannels(nn.Module):
    """A single bare (B, 5, H, W) tensor: matches none of segmentation (13), depth (1), normal (3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class FiveChannelsTuple(FiveChannels):
    def forward(self, x):
        return (self.conv(x),)


class NanFromStart(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = deeplab_resnet_tiny()

    def forward(self, x):
        return {k: v * float("nan") for k, v in self.inner(x).items()}


class NanAfterThreeSteps(nn.Module):
    """Finite while probed and evaluated; NaN from the fourth training-mode forward on."""

    def __init__(self):
        super().__init__()
        self.inner = deeplab_resnet_tiny()
        self.training_calls = 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.training_calls += 1
            if self.training_calls > 3:
                out = {k: v * float("nan") for k, v in out.items()}
        return out


def five():
    return FiveChannels()


def five_tuple():
    return FiveChannelsTuple()


def nan_from_start():
    torch.manual_seed(0)
    return NanFromStart()


def nan_after_three():
    torch.manual_seed(0)
    return NanAfterThreeSteps()
'''


# --- helpers -------------------------------------------------------------------------------------


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run ``adapmtl ARGS`` in-process; stdout and stderr are captured separately (``result.stderr``)."""
    return CliRunner().invoke(app, [str(a) for a in args], env={**CLI_ENV, **(env or {})})


def user_error(result: Result) -> str:
    """Assert the CLI's contract for a user error and return the message after ``Error: ``.

    Exit code 2, stderr is exactly one line ``Error: ...``, no traceback anywhere.
    """
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines
    assert sum(line.startswith("Error: ") for line in result.output.splitlines()) == 1
    return lines[0][len("Error: ") :]


def prune_config(checkpoint: Path, scenes: Path, out: Path, **overrides: Any) -> PruneConfig:
    values: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "factory": FACTORY,
        "data": "synthetic",
        "data_dir": str(scenes),
        "sparsity": TARGET,
        "steps": RESUME_STEPS,
        "batch_size": 4,
        "save_every": RESUME_SAVE_EVERY,
        "log_every": 1,
        "seed": 0,
        "device": "cpu",
        "out": str(out),
    }
    values.update(overrides)
    return make_prune_config(**values)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("export"))
    return dst


def snapshot_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), to prove that a refused command touched nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_report(run: Path) -> RunReport:
    return RunReport.model_validate_json((run / "report.json").read_text(encoding="utf-8"))


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``seconds``: turns a hang into a test failure."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def interrupt_at(step: int) -> Hooks:
    """Hooks whose ``on_step`` raises ``KeyboardInterrupt`` once ``step`` is done (a crash, no state saved)."""

    def on_step(info: Any) -> None:
        if info.step == step:
            raise KeyboardInterrupt

    return Hooks(on_step=on_step)


# --- session assets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliRun:
    path: Path
    result: Result
    seconds: float


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e") / "scenes"
    generate_scenes(root, train=24, val=8, size=(32, 48), seed=0)
    return root


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain state_dict of a seeded ``deeplab_resnet_tiny`` (the user's "trained" model)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(deeplab_resnet_tiny().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def factory_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("factories") / "odd_models.py"
    path.write_text(FACTORY_SOURCE, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pruned_run(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, scenes: Path) -> CliRun:
    """``adapmtl prune`` (not quiet, so the report table is rendered too) into a fresh run folder."""
    out = tmp_path_factory.mktemp("runs") / "a"
    start = time.perf_counter()
    result = invoke(
        "prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--device", "cpu", "--out", out, *PRUNE_ARGS
    )
    return CliRun(out, result, time.perf_counter() - start)


@pytest.fixture(scope="session")
def exported_run(pruned_run: CliRun) -> CliRun:
    """``adapmtl export RUN --onnx`` on the shared run (writes ``RUN/export/``)."""
    start = time.perf_counter()
    result = invoke("export", pruned_run.path, "--onnx")
    return CliRun(pruned_run.path / "export", result, time.perf_counter() - start)


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, scenes: Path) -> Path:
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    run_prune(prune_config(checkpoint, scenes, out))
    return out


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, scenes: Path) -> Path:
    """The same run stopped by ``KeyboardInterrupt`` after step 13; its last saved state is step 12.

    Never resumed in place: tests resume copies of it.
    """
    out = tmp_path_factory.mktemp("resume") / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_prune(prune_config(checkpoint, scenes, out), hooks=interrupt_at(INTERRUPT_AT))
    return out

"""Shared fixtures: seeded tiny multitask models (one per sharing topology) and a small image batch.

The model classes live in ``tiny_models.py`` so test files in any subfolder can import them directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

# Under ``--import-mode=importlib`` pytest does not put this folder on sys.path; tests still import it.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TINY_MODELS  # noqa: E402


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return TINY_MODELS[name]()


@pytest.fixture
def hard_shared() -> nn.Module:
    """Encoder shared by every task, one conv head per task; returns a dict."""
    return _build("hard_shared")


@pytest.fixture
def branched() -> nn.Module:
    """Stem, branch shared by segmentation and depth, branch for normal only; returns a dict."""
    return _build("branched")


@pytest.fixture
def task_attention() -> nn.Module:
    """MTAN-like per-task attention inside the encoder; returns a dict."""
    return _build("task_attention")


@pytest.fixture
def tuple_output() -> nn.Module:
    """Hard sharing that returns ``([seg, depth, normal], aux)``."""
    return _build("tuple_output")


@pytest.fixture
def with_linear() -> nn.Module:
    """Hard sharing where the normal head ends in an ``nn.Linear`` over channels; returns a dict."""
    return _build("with_linear")


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_model(request: pytest.FixtureRequest) -> nn.Module:
    """Every tiny topology in turn (the test runs once per topology; the id is the fixture name)."""
    return _build(request.param)


@pytest.fixture
def tiny_images() -> Tensor:
    """A seeded ``(2, 3, 32, 48)`` image batch matching the tiny models."""
    return torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))

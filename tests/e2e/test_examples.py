"""``examples/``: every script compiles and documents itself; the LibMTL-style factory is discovered right.

Running the scripts end to end takes a minute: ``python -m pytest -m slow tests/e2e/test_examples.py``.
"""

from __future__ import annotations

import importlib.util
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapmtl_cli.model.discover import discover_components

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_there_is_one_script_per_situation() -> None:
    assert SCRIPTS == [
        "libmtl_encoder_decoders.py",
        "pickled_model.py",
        "state_dict_factory.py",
        "torchrun_checkpoint.py",
    ]
    index = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in index for name in SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_compiles_and_has_a_usage_docstring(name: str, tmp_path: Path) -> None:
    py_compile.compile(str(EXAMPLES / name), cfile=str(tmp_path / "x.pyc"), doraise=True)
    source = (EXAMPLES / name).read_text(encoding="utf-8")
    assert source.startswith('"""') and f"python examples/{name}" in source


def test_libmtl_style_factory_is_split_into_encoder_and_decoders() -> None:
    spec = importlib.util.spec_from_file_location("libmtl_example", EXAMPLES / "libmtl_encoder_decoders.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build()
    outputs = model(torch.randn(2, 3, 32, 48))
    cmap = discover_components(model, outputs, list(outputs))
    prefixes = {c.name: c.prefix for c in cmap.components}
    assert prefixes == {
        "backbone": "encoder",
        "head:segmentation": "decoders.segmentation",
        "head:depth": "decoders.depth",
        "head:normal": "decoders.normal",
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_end_to_end(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--work", str(tmp_path / "work"), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "work" / "run" / "report.json").is_file()

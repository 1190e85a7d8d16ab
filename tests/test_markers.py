"""Every ``pytest.mark.<name>`` used under ``tests/`` is registered in pyproject.toml, and the default run keeps
the slow kinds other than ``slow`` (``distributed``, ``onnx``, ``browser``), so CI still runs them."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# Marks pytest itself defines; they need no line in pyproject.
BUILTIN = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}
# Kinds that have a marker to select or skip them, but that the default run (and so CI) must still run.
RUN_BY_DEFAULT = ("distributed", "onnx", "browser")
# Built from parts so that this file's own pattern is not read as a use.
MARK = re.compile(r"\bpytest\.mark" + r"\.([A-Za-z_]\w*)")


def _pytest_options() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        options: dict[str, Any] = tomllib.load(fh)["tool"]["pytest"]["ini_options"]
    return options


def _registered() -> set[str]:
    return {line.split(":", 1)[0].strip() for line in _pytest_options().get("markers", [])}


def _uses() -> dict[str, list[str]]:
    """Marker name -> ``path:line`` of each use under tests/."""
    uses: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in MARK.findall(line):
                uses.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{number}")
    return uses


def test_every_marker_used_in_tests_is_registered() -> None:
    registered = _registered() | BUILTIN
    unknown = {name: where for name, where in _uses().items() if name not in registered}
    assert not unknown, "markers not registered in pyproject.toml [tool.pytest.ini_options] markers:\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in sorted(unknown.items())
    )


def test_the_slow_kinds_are_registered_and_only_slow_is_left_out_by_default() -> None:
    registered = _registered()
    assert {"slow", *RUN_BY_DEFAULT} <= registered, sorted(registered)
    args = shlex.split(_pytest_options().get("addopts", ""))
    expressions = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-m"]
    expressions += [arg.split("=", 1)[1] for arg in args if arg.startswith("-m=")]
    assert expressions == ["not slow"], f"the default run must deselect exactly the slow tests: {args}"


def test_the_pattern_finds_marks() -> None:
    found = MARK.findall("@pytest.mark" + ".onnx\npytestmark = pytest.mark" + ".distributed")
    assert found == ["onnx", "distributed"]

"""Import layers: a stage of ``adapmtl_cli`` imports only lower stages (and itself), and no modules import in a loop.

Every module is parsed (``ast``, nothing imported), imports inside functions and under ``TYPE_CHECKING``
included: a function-level import is still a dependency, it only hides it from import time. The loop check
follows what runs at import: module-level imports (class bodies, ``try`` and ``if`` at module level included),
not those inside functions or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "adapmtl_cli"

# Lowest first. A module's stage is the first name under adapmtl_cli (a sub-package or a top-level module).
RANKS: dict[str, int] = {
    "errors": 0,
    "config": 0,
    "files": 0,
    "tasks": 1,
    "models": 1,
    "data": 2,
    "model": 2,
    "sparsity": 3,
    "methods": 4,
    "export": 5,
    "api": 6,
    "train": 7,
    "report": 8,
    "jobs": 9,
    "cli": 10,
}

# (importing stage, imported stage) -> why it may, against the rules above.
ALLOWED: dict[tuple[str, str], str] = {
    ("model", "tasks"): "output matching resolves task aliases (tasks.registry.match_task)",
    ("config", "errors"): "errors is the ground of the ground: every stage raises its error types",
    ("files", "errors"): "errors is the ground of the ground: every stage raises its error types",
}

# Not checked as importers: the root package re-exports the api lazily, __main__ runs the cli.
EXEMPT = {PACKAGE, f"{PACKAGE}.__main__"}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    at_import_time: bool  # module level and not under TYPE_CHECKING


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package by its ``__init__``)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, level: int, name: str | None, *, is_package: bool) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _own_module(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (None outside it)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, source: str, *, is_package: bool = False) -> Iterator[Import]:
    """The imports of package modules in ``source``, the text of ``module``."""
    tree = ast.parse(source, filename=module)

    def visit(node: ast.AST, runtime: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _own_module(alias.name)
                if target is not None:
                    yield Import(module, target, node.lineno, runtime)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module, is_package=is_package)
            for alias in node.names:
                # a submodule when the name is one, else the module the name is taken from
                target = _own_module(base if alias.name == "*" else f"{base}.{alias.name}")
                if target is not None:
                    yield Import(module, target, node.lineno, runtime)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                yield from visit(child, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, False)
            for child in node.orelse:
                yield from visit(child, runtime)
        else:
            for child in ast.iter_child_nodes(node):
                yield from visit(child, runtime)

    yield from visit(tree, True)


IMPORTS = [
    imp
    for module, path in MODULES.items()
    for imp in _imports(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
]


def _stage(module: str) -> str:
    """The stage of a module; ``api`` for the root package (it resolves its names from ``api``)."""
    if module == PACKAGE:
        return "api"
    return module.split(".")[1]


def _layer_violations() -> list[str]:
    problems: list[str] = []
    for imp in IMPORTS:
        if imp.source in EXEMPT:
            continue
        source, target = _stage(imp.source), _stage(imp.target)
        if source == target or (source, target) in ALLOWED:
            continue
        if source not in RANKS or target not in RANKS:
            continue  # reported by test_every_module_has_a_stage
        where = f"{MODULES[imp.source].relative_to(ROOT)}:{imp.line}: {imp.source} imports {imp.target}"
        if RANKS[target] > RANKS[source]:
            problems.append(f"{where} ({source} {RANKS[source]} < {target} {RANKS[target]}: a higher stage)")
        elif RANKS[target] == RANKS[source]:
            problems.append(f"{where} ({source} and {target} share rank {RANKS[source]}: siblings stay apart)")
    return list(dict.fromkeys(problems))  # one line per import statement, not per imported name


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module in the import-time graph (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.at_import_time and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def test_every_module_has_a_stage() -> None:
    unranked = sorted(m for m in MODULES if m not in EXEMPT and _stage(m) not in RANKS)
    assert not unranked, f"modules of no stage; add their stage to RANKS in {Path(__file__).name}: {unranked}"


def test_allowed_pairs_name_known_stages() -> None:
    assert all(a in RANKS and b in RANKS for a, b in ALLOWED), ALLOWED


def test_no_stage_imports_a_higher_or_sibling_stage() -> None:
    problems = _layer_violations()
    assert not problems, f"{len(problems)} import(s) against the stage order:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    cycles = _cycles()
    lines = []
    for component in cycles:
        members = set(component)
        edges = sorted(
            f"    {MODULES[i.source].relative_to(ROOT)}:{i.line}: {i.source} -> {i.target}"
            for i in IMPORTS
            if i.at_import_time and i.source in members and i.target in members and i.source != i.target
        )
        lines.append(f"  {' <-> '.join(component)}\n" + "\n".join(edges))
    assert not cycles, f"{len(cycles)} import cycle(s) among module-level imports:\n" + "\n".join(lines)


def test_the_parser_sees_every_kind_of_import() -> None:
    """Guards the checks above against passing by reading nothing."""
    source = """
from __future__ import annotations
import os
import adapmtl_cli.tasks.registry
from typing import TYPE_CHECKING
from . import base
from ..errors import DataError
from adapmtl_cli import load_sparse
try:
    from adapmtl_cli.files.atomic import write_text
except ImportError:
    pass
if TYPE_CHECKING:
    from adapmtl_cli.model.outputs import OutputMap
class Split:
    from adapmtl_cli.data.augment import AugmentedSplit
def later() -> None:
    from adapmtl_cli.train import loop
"""
    found = [(i.target, i.at_import_time) for i in _imports(f"{PACKAGE}.data.npy", source)]
    assert found == [
        (f"{PACKAGE}.tasks.registry", True),
        (f"{PACKAGE}.data.base", True),
        (f"{PACKAGE}.errors", True),
        (PACKAGE, True),
        (f"{PACKAGE}.files.atomic", True),
        (f"{PACKAGE}.model.outputs", False),
        (f"{PACKAGE}.data.augment", True),
        (f"{PACKAGE}.train.loop", False),
    ]
    assert _stage(PACKAGE) == "api" and len(IMPORTS) > 100

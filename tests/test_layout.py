"""The tree keeps its shape: no import cycles, paths only in the registry, the engine small and method-agnostic."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pipeline_lib.engine.closure import direct_imports, package_dir

PACKAGE = package_dir()
#: where each output path is declared; everything else asks the stage context
REGISTRY = PACKAGE / "engine" / "stages.py"
OUTPUT_PATH = re.compile(r"^(artifacts|metrics|plots|reports)/")
METHODS = ("data", "backbone", "features", "diagnose", "fewshot", "inversion", "czsl", "report", "optim")


def modules() -> dict[str, Path]:
    root = PACKAGE.parent
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = {name: set(direct_imports(name)) - {name} for name in modules()}
    assert import_cycles(graph) == []


def test_output_paths_are_spelled_only_in_the_registry() -> None:
    offenders = []
    for name, path in modules().items():
        if path == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and OUTPUT_PATH.match(node.value):
                offenders.append(f"{name}:{node.lineno}: {node.value!r}")
    assert offenders == []  # resolve paths through the stage context or the registry


def test_engine_imports_no_method_package_except_config_sections() -> None:
    """The engine knows methods only through the registry's strings and the params sections it validates."""
    for name in (n for n in modules() if n.startswith("pipeline_lib.engine.") and n != "pipeline_lib.engine.config"):
        methods = {m for m in direct_imports(name) if m.split(".")[1:2] and m.split(".")[1] in METHODS}
        assert not methods, f"{name} imports {sorted(methods)}"


def test_engine_modules_stay_small() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {n: s for n, s in sizes.items() if n.startswith("pipeline_lib.engine") and s > 400} == {}

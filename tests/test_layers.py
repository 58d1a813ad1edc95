"""Layers point one way: no import cycle between unlearn's modules, nor between its subpackages.

Every ``import`` counts, at module level or inside a function (a function-level import hides a
cycle from Python, not from the design), and so does ``importlib.import_module("literal")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "unlearn"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported_names(path: Path, name: str) -> set[str]:
    """Dotted names ``path`` imports anywhere in its body (``from a import b`` gives ``a.b``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from the module's own package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import name`` of a non-module name
    is an import of ``pkg``, i.e. of its ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported_names(path, name):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def layer(module: str) -> str:
    """``unlearn.data.base`` -> ``unlearn.data``; top-level modules are their own layer."""
    return ".".join(module.split(".")[:2])


def layer_graph() -> dict[str, set[str]]:
    """Subpackage (or top-level module) -> the others it imports from."""
    graph: dict[str, set[str]] = {}
    for source, targets in module_graph().items():
        graph.setdefault(layer(source), set()).update(
            layer(t) for t in targets if layer(t) != layer(source)
        )
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_function_level_and_known_imports(tmp_path: Path) -> None:
    graph = module_graph()
    # edges that exist, so an empty (broken) graph cannot pass the tests below
    assert "unlearn.data.base" in graph["unlearn.data.classification"]
    assert "unlearn.data" in graph["unlearn.poisons.command"]
    assert "unlearn.data.taskonomy" in graph["unlearn.poisons.taskonomy_export"]
    module = tmp_path / "m.py"
    module.write_text(
        "import importlib\n"
        "def f():\n"
        "    from unlearn.poisons.store import load_poison\n"
        "    from . import sibling\n"
        "    return importlib.import_module('unlearn.cli')\n"
    )
    names = _imported_names(module, "unlearn.data.m")
    assert {"unlearn.poisons.store.load_poison", "unlearn.data.sibling", "unlearn.cli"} <= names
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_subpackages() -> None:
    cycle = find_cycle(layer_graph())
    assert cycle is None, "import cycle between layers: " + " -> ".join(cycle or [])


def test_data_never_imports_poisons() -> None:
    """The data modules read poison stores; the store's format lives in the data layer."""
    assert "unlearn.poisons" not in layer_graph()["unlearn.data"]
    assert "unlearn.data" in layer_graph()["unlearn.poisons"]

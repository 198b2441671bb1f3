"""Arrows point down: `tasks/common/` under the concern packages, those under `flows/`, and no
import circles among the modules of `tasks/`, nor among those of `flows/`.

Read from the source with `ast`, so an import inside a function or under `TYPE_CHECKING` counts
as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_PACKAGES = ("ingest", "privacy", "quality", "storage", "reporting")


def module_name(path: Path) -> str:
    """`tasks/privacy/leak_scan.py` -> `tasks.privacy.leak_scan`; an `__init__` is its package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def task_modules(package: str = "tasks") -> dict[str, Path]:
    """Every module under `package` (tasks/ by default), by dotted name."""
    return {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path, name: str) -> Iterator[str]:
    """The dotted names a module file imports (see `imports_in`)."""
    return imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool = False) -> Iterator[str]:
    """The dotted names a module imports, anywhere in its body (`from a import b` gives `a.b`)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(package: str = "tasks") -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (a name that is no module is its package's)."""
    modules = task_modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {dep for dep in imported(path, name) if dep in modules and dep != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_every_kind_of_import() -> None:
    """The reader finds top-level, function-level, TYPE_CHECKING and relative imports alike."""
    graph = import_graph()
    # Spot checks of edges the tree is known to hold, so an empty graph cannot pass.
    assert "tasks.common.errors" in graph["tasks.common.tasks"]
    assert "tasks.privacy.leak_index" in graph["tasks.privacy.leak_scan"]
    assert "tasks.common" in graph and "tasks.privacy" in graph
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from .. import common\n"
        "if TYPE_CHECKING:\n"
        "    import tasks.ingest.fetch\n"
        "def f() -> None:\n"
        "    from tasks.privacy.leak_scan import LeakScanner\n"
    )
    names = set(imports_in(source, "tasks.quality.probe"))
    assert {
        "tasks.quality.sibling",
        "tasks.common",
        "tasks.ingest.fetch",
        "tasks.privacy.leak_scan",
    } <= names


def test_common_imports_no_stage_package() -> None:
    """`tasks/common/` is the bottom layer: it imports nothing from the concern packages."""
    upward = {
        f"{name} -> {dep}"
        for name, deps in import_graph().items()
        if name == "tasks.common" or name.startswith("tasks.common.")
        for dep in deps
        if dep.split(".")[1:2] and dep.split(".")[1] in STAGE_PACKAGES
    }
    assert not upward, sorted(upward)


def test_no_task_module_imports_flows() -> None:
    """Nothing under tasks/ imports the flows package that sits on top of it."""
    upward = {
        f"{name} -> {dep}"
        for name, path in task_modules().items()
        for dep in imported(path, name)
        if dep == "flows" or dep.startswith("flows.")
    }
    assert not upward, sorted(upward)


def test_no_import_circles_among_task_modules() -> None:
    """No module of tasks/ reaches itself through its imports."""
    found = cycles(import_graph())
    assert not found, found


def test_no_import_circles_among_flow_modules() -> None:
    """No module of flows/ reaches itself through its imports: the CLI's entry point
    (`python -m flows.cli`) imports the flow module, and the flow module imports no CLI."""
    graph = import_graph("flows")
    assert "flows.user_metrics" in graph["flows.cli"]  # seen, though imported inside a function
    assert "flows.cli" not in graph["flows.user_metrics"]
    found = cycles(graph)
    assert not found, found


def test_cycle_finder_finds_a_circle() -> None:
    """The cycle finder reports a circle and leaves a chain alone."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []

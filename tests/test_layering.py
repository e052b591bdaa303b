"""Which localpref modules may import which (STYLE.md: "Ground floors import nothing above them").

Imports are read from the source with ``ast``: every ``import`` and ``from ... import`` anywhere
in a module (inside functions and ``if TYPE_CHECKING:`` blocks too), since a function-level import
is still a dependency, only a later one. ``from localpref.tasks import pretrain`` counts as an
import of ``localpref.tasks`` and of ``localpref.tasks.pretrain``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import localpref

PACKAGE = Path(localpref.__file__).parent
# The ground floors: they may import each other and libraries, never a module built on them
# (a task family, the training loop, the steering loop, data loading).
GROUND = {"localpref.models", "localpref.config", "localpref.log", "localpref.stats", "localpref.losses",
          "localpref.spans"}


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Module name -> file, for ``localpref`` and ``localpref.kernels`` (the top-level ``kernels/``)."""
    files = {}
    for root, prefix in ((package, ("localpref",)), (package.parent / "kernels", ("localpref", "kernels"))):
        for path in sorted(root.rglob("*.py")):
            parts = prefix + path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The localpref modules ``name`` (at ``path``) imports, resolved to the longest known module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..data import y
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets.add(module)
            targets |= {f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known}
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target not in (name, "localpref"):  # the package's __init__ holds only a docstring
            resolved.add(target)
    return resolved


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = module_files(package)
    return {name: imported(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "localpref"
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "models.py").write_text("import os\n\ndef f():\n    from localpref.tasks import pretrain\n")
    (pkg / "tasks" / "lists.py").write_text("from . import base\nfrom ..models import f\n")
    known = {"localpref.models", "localpref.tasks", "localpref.tasks.pretrain", "localpref.tasks.base",
             "localpref.tasks.lists"}
    # a submodule's import runs its package's __init__ too, so both count
    assert imported("localpref.models", pkg / "models.py", known) == {"localpref.tasks", "localpref.tasks.pretrain"}
    assert imported("localpref.tasks.lists", pkg / "tasks" / "lists.py", known) == {
        "localpref.tasks", "localpref.tasks.base", "localpref.models"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_ground_floors_import_nothing_above_them():
    graph = import_graph()
    assert GROUND <= set(graph), sorted(GROUND - set(graph))
    above = {name: sorted(graph[name] - GROUND) for name in sorted(GROUND) if graph[name] - GROUND}
    assert not above, f"ground modules importing modules built on them: {above}"


def test_no_import_cycle_among_localpref_modules():
    graph = import_graph()
    assert len(graph) > 40 and "localpref.kernels.gather_logps" in graph  # the whole package was read
    assert not cycles(graph)

"""Which localpref modules may import which (STYLE.md: "Ground floors import nothing above them").

The package is a house of floors (``FLOORS``, lowest first): a module may import modules on its own
floor and on lower ones, never on a higher one; every module is on a floor, so a new module must be
placed; and no modules import each other in a cycle, on one floor either.

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

# The house, lowest floor first, as today's imports have it. Each floor names modules and packages;
# a package stands for every module in it, and the longest name that fits a module gives its floor
# (so one module of a package could sit elsewhere). ``localpref`` stands for the root __init__ only.
FLOORS: list[tuple[str, set[str]]] = [
    # Know no task family, no data format, no loop: they import each other and libraries only.
    ("ground", {"localpref", "localpref.models", "localpref.config", "localpref.log", "localpref.stats",
                "localpref.losses", "localpref.spans", "localpref.hardware", "localpref.memory"}),
    # Token log-probs: the references and the Triton kernels beside them (kernels/ is localpref.kernels).
    ("log-probs", {"localpref.logprobs", "localpref.kernels"}),
    # Steers: schema, loading, importers, tokenization, collected trajectories (a rewrite's solver
    # comes from the caller: no task family here).
    ("data", {"localpref.data"}),
    # What the training loop is made of: batch layouts, scoring and the reference, evaluation on
    # held-out steers, processes, checkpoints.
    ("training parts", {"localpref.collate", "localpref.packing", "localpref.reference", "localpref.evaluate",
                        "localpref.distributed", "localpref.checkpoint"}),
    # Writing a turn with a model (TurnWriter, generate_batch).
    ("generation", {"localpref.generation"}),
    # Task families, and the tiny task models (tasks.pretrain generates and scores: hence above those).
    ("tasks", {"localpref.tasks"}),
    ("steering", {"localpref.steering"}),
    ("training", {"localpref.train"}),
    ("page", {"localpref.page"}),
    ("entry points", {"localpref.cli", "localpref.demo", "localpref.steer_cli"}),
]


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Module name -> file, for ``localpref`` and ``localpref.kernels`` (the top-level ``kernels/``,
    read whether or not it has an ``__init__.py``: without one it is a namespace package)."""
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
        if target and target not in (name, "localpref"):  # the package's __init__ imports no localpref module
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


def floor_of(module: str, floors: list[tuple[str, set[str]]] = FLOORS) -> int | None:
    """Index in ``floors`` of the longest name that is ``module`` or a package holding it; None if none."""
    best = None  # (length of the name, floor)
    for i, (_, names) in enumerate(floors):
        for name in names:
            fits = module == name or (name != "localpref" and module.startswith(name + "."))
            if fits and (best is None or len(name) > best[0]):
                best = (len(name), i)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, set[str]], floors: list[tuple[str, set[str]]] = FLOORS) -> list[str]:
    """One line per import of a module on a higher floor than the importer's."""
    found = []
    for name in sorted(graph):
        here = floor_of(name, floors)
        for target in sorted(graph[name]):
            there = floor_of(target, floors)
            if here is not None and there is not None and there > here:
                found.append(f"{name} (floor {floors[here][0]!r}) imports {target} (floor {floors[there][0]!r})")
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


def test_the_floor_check_on_a_small_house():
    floors = [("ground", {"localpref", "localpref.models"}), ("data", {"localpref.data"}),
              ("tasks", {"localpref.tasks", "localpref.data.odd"})]
    assert [floor_of(m, floors) for m in ("localpref", "localpref.models", "localpref.data.load",
                                          "localpref.data.odd", "localpref.tasks.lists", "localpref.train")] == \
        [0, 0, 1, 2, 2, None]  # the root names itself only; the longest name wins
    graph = {"localpref.models": {"localpref.data.load"}, "localpref.data.load": {"localpref.models"},
             "localpref.data.odd": {"localpref.data.load"}, "localpref.tasks.lists": {"localpref.data.odd"}}
    assert upward_imports(graph, floors) == [
        "localpref.models (floor 'ground') imports localpref.data.load (floor 'data')"]


def test_every_module_is_on_one_floor():
    graph = import_graph()
    unplaced = sorted(name for name in graph if floor_of(name) is None)
    assert not unplaced, f"modules on no floor: put each in FLOORS (tests/test_layering.py): {unplaced}"
    names = [name for _, floor in FLOORS for name in floor]
    assert len(names) == len(set(names)), "a name is on two floors"
    stale = sorted(n for n in names if not any(m == n or m.startswith(n + ".") for m in graph))
    assert not stale, f"FLOORS names modules that do not exist: {stale}"


def test_no_module_imports_a_higher_floor():
    found = upward_imports(import_graph())
    assert not found, "imports of a higher floor (FLOORS in tests/test_layering.py):\n" + "\n".join(found)


def test_no_import_cycle_among_localpref_modules():
    graph = import_graph()
    assert len(graph) > 40 and "localpref.kernels.gather_logps" in graph  # the whole package was read
    assert not cycles(graph)


def test_no_function_in_localpref_is_over_a_hundred_lines():
    # STYLE.md: functions under ~60 lines, the training loop excepted; issue 24: none over ~100.
    long = []
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long

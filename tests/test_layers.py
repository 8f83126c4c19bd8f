"""The layer rules (docs/architecture.md): no import cycles, and the import-linter contracts.

The cycle finder reads every module under console/ and widgets/ with ``ast`` (nothing is
imported) and builds a graph with one node per module; a package is the node of its
``__init__.py`` ("console.core.analysis").  An edge a -> b means: running a can import b.

* Every import counts: module level, inside functions and classes, ``try``/``except``,
  relative and absolute, and ``importlib.import_module("literal")``.  Imports in the body of
  ``if TYPE_CHECKING:`` are skipped (they never run); its ``else:`` branch counts.
* ``import a.b.c`` -> a.b.c.  ``from a.b import c`` -> a.b.c when c is a submodule, else
  a.b (c is a name in a/b/__init__.py).  A name that is no module found here resolves to
  its longest prefix that is one (``import console.core.gone`` -> console.core).
* Importing a.b.c runs the ``__init__`` of a.b and of a first, so the edge to a.b.c
  implies edges to a.b and a -- except to the importer's own ancestor packages: when
  console.core.analysis.checker runs, its packages console.core.analysis, console.core and
  console are already in sys.modules (Python imports the parents before the child), so
  importing a sibling never re-enters them.  Counting them would make every ``__init__``
  that imports one of its children a false cycle (the package imports the child, the child
  "imports" the package).  A module depends on its own package only when it names it:
  ``import console.core.analysis`` or ``from console.core.analysis import Params``; that is
  the real partially-initialised-package bug and is reported.
* A cycle is a strongly connected component of two or more modules; a module importing
  itself is not one.  Each component is reported as simple chains "a -> b -> a" that
  together use every import edge inside it, each edge with the file:line that makes it.

The contracts (which layer may import which) live in pyproject.toml [tool.importlinter]
and are checked by import-linter's own ``lint-imports``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("console", "widgets")


# ---------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int
    in_function: bool
    statement: str  # the import as written
    implied: bool = False  # the target is a parent package the statement runs on the way

    def where(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        how = "in a function" if self.in_function else "module level"
        also = f"; runs package {self.target} on the way" if self.implied else ""
        return f"{shown}:{self.line} ({how}{also}): {self.statement}"


@dataclass
class Graph:
    root: Path
    modules: dict[str, Path]
    edges: dict[str, dict[str, list[Edge]]] = field(default_factory=dict)  # source -> target -> evidence
    unreadable: list[str] = field(default_factory=list)

    def targets(self, source: str) -> list[str]:
        return sorted(self.edges.get(source, {}))


def discover(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> file, for every .py in an importable package (each dir has __init__.py)."""
    modules: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if not all((root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
                continue  # a loose script dir, not a package
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """(dotted names the statement may import, the statement, line, in a function)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[list[str], str, int, bool]] = []
        self.depth = 0

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def _add(self, names: list[str], node: ast.AST) -> None:
        self.found.append((names, ast.unparse(node), node.lineno, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add([alias.name], node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:  # each name: the submodule base.name if there is one, else base
            self._add([base] if alias.name == "*" else [f"{base}.{alias.name}", base], node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                self._add([arg.value], node)
        self.generic_visit(node)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> Graph:
    graph = Graph(root=root, modules=discover(root, packages))
    for module, path in graph.modules.items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError) as e:
            graph.unreadable.append(f"{path.relative_to(root)}: {type(e).__name__}: {e}")
            continue
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(tree)
        for names, statement, line, in_function in visitor.found:
            # a "from a import b" lists a.b first: the submodule if it exists, else package a
            target = next((n for n in names if n in graph.modules), None) or _known(names[-1], graph.modules)
            if target is None:
                continue  # not ours (stdlib, textual, ...)
            hits = [(target, False)]
            hits += [(a, True) for a in _ancestors(target)
                     if a in graph.modules and module != a and not module.startswith(a + ".")]
            for tgt, implied in hits:
                if tgt == module:
                    continue  # a self-loop is not a cycle
                evidence = graph.edges.setdefault(module, {}).setdefault(tgt, [])
                if not any(e.line == line for e in evidence):  # one statement, several names: one edge
                    evidence.append(Edge(module, tgt, path, line, in_function, statement, implied))
    return graph


# ---------------------------------------------------------------------------- cycles


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of two or more modules, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(graph.targets(start)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.targets(child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return sorted(found)


def _shortest_path(graph: Graph, start: str, goal: str, within: set[str]) -> list[str]:
    prev: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])  # type: ignore[arg-type]
            return path[::-1]
        for nxt in graph.targets(node):
            if nxt in within and nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{goal} is not reachable from {start} inside its component")


def cycle_chains(graph: Graph, component: list[str]) -> list[list[str]]:
    """Simple cycles "a -> b -> ... -> a" that between them use every edge of the component."""
    members = set(component)
    chains: list[list[str]] = []
    covered: set[tuple[str, str]] = set()
    for source in component:
        for target in graph.targets(source):
            if target not in members or (source, target) in covered:
                continue
            chain = [source] + _shortest_path(graph, target, source, members)
            covered.update(zip(chain, chain[1:], strict=False))
            chains.append(chain)
    return chains


def describe_cycles(graph: Graph, packages: tuple[str, ...] = PACKAGES) -> str:
    components = strongly_connected(graph)
    if not components:
        return ""
    where = " and ".join(p + "/" for p in packages)
    out = [f"{len(components)} import cycle(s) under {where} (each: modules that import each other; "
           "cut one import per chain, e.g. move the shared code down a layer):"]
    for n, component in enumerate(components, 1):
        out.append(f"\n{n}. {', '.join(component)}")
        chains = cycle_chains(graph, component)
        for chain in chains:
            out.append("   " + " -> ".join(chain))
        used = sorted({(a, b) for chain in chains for a, b in zip(chain, chain[1:], strict=False)})
        out.append("   the imports:")
        for a, b in used:
            evidence = graph.edges[a][b]
            more = f" (+{len(evidence) - 1} more)" if len(evidence) > 1 else ""
            out.append(f"     {a} -> {b}: {evidence[0].where(graph.root)}{more}")
    return "\n".join(out)


# ---------------------------------------------------------------------------- the rules


def test_no_import_cycles():
    graph = import_graph(ROOT)
    if graph.unreadable:
        pytest.fail("cannot read the imports of:\n" + "\n".join(graph.unreadable), pytrace=False)
    # the scan sees the tree: a few imports that must be there
    assert "console.core.events" in graph.targets("console.core.engine")
    assert "console.core.analysis.core" in graph.targets("console.core.analysis")
    report = describe_cycles(graph)
    if report:
        pytest.fail(report, pytrace=False)


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    found = str(exe) if exe.exists() else shutil.which("lint-imports")
    if not found:
        pytest.fail("lint-imports is not installed: .venv/bin/pip install 'import-linter>=2.1' (in the dev extra)")
    return found


def test_import_linter_contracts():
    proc = subprocess.run([_lint_imports(), "--no-cache", "--no-logo", "pyproject.toml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"lint-imports exited {proc.returncode}: a layer contract in pyproject.toml [tool.importlinter] "
                    f"is broken (or the tree does not parse)\n{proc.stdout}{proc.stderr}", pytrace=False)


LAYER_RULES = {  # docs/architecture.md "Rules"; the contracts may forbid more, never less
    "console.core": {"textual", "rich", "console.adapters", "console.remote", "console.commands", "console.ui",
                     "console.sandbox", "console.wiring", "widgets"},
    "console.adapters": {"console.commands", "console.ui", "console.remote", "widgets"},
    "console.ui": {"console.commands"},
    "widgets": {"console.commands", "console.remote", "console.ui"},
}


def test_contracts_state_the_layer_rules():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(cfg["root_packages"]) >= set(PACKAGES)
    assert cfg.get("include_external_packages") is True, "without include_external_packages textual/rich are invisible"
    forbidden: dict[str, set[str]] = {}
    for c in cfg["contracts"]:
        assert not c.get("allow_indirect_imports"), f"contract {c['name']!r} lets indirect imports through"
        if c["type"] == "forbidden" and not c.get("ignore_imports"):
            for src in c["source_modules"]:
                forbidden.setdefault(src, set()).update(c["forbidden_modules"])
    for src, must in LAYER_RULES.items():
        missing = must - forbidden.get(src, set())
        assert not missing, f"[tool.importlinter] no longer forbids {src} -> {', '.join(sorted(missing))}"


# ---------------------------------------------------------------------------- the finder itself


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


def test_cycle_finder_reports_a_planted_cycle_and_nothing_else(tmp_path: Path):
    _tree(tmp_path, {
        # the cycle: a -> b (module level) -> c (in a function, relative) -> a (from-import of a submodule)
        "pkg/__init__.py": "from pkg import a  # a package importing its child: no cycle by itself\n",
        "pkg/a.py": "import pkg.sub.b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def later():\n    from .. import c\n",
        "pkg/c.py": "from pkg import a\nimport pkg.c  # a self-import: no cycle\n",
        # no cycles below: a TYPE_CHECKING import, and a child importing a sibling through its parent
        "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.e\nelse:\n    import os\n",
        "pkg/e.py": "import pkg.d\nfrom pkg.sub import b\n",
        # a real one: the child needs a name from its half-initialised parent
        "other/__init__.py": "from other.x import X\nHELPER = 1\n",
        "other/x.py": "from other import HELPER\nX = HELPER\n",
        "loose/x.py": "import pkg.a  # no __init__.py: not a package, not scanned\n",
    })
    graph = import_graph(tmp_path, ("pkg", "other", "loose"))
    assert "loose.x" not in graph.modules
    assert set(graph.targets("pkg.a")) == {"pkg.sub", "pkg.sub.b"}  # the parent pkg.sub runs on the way
    assert graph.targets("pkg.sub.b") == ["pkg.c"]
    assert graph.targets("pkg.c") == ["pkg.a"]
    assert graph.targets("pkg.d") == []
    assert strongly_connected(graph) == [["other", "other.x"], ["pkg.a", "pkg.c", "pkg.sub.b"]]
    report = describe_cycles(graph)
    assert "other -> other.x -> other" in report
    assert "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a" in report
    assert "pkg/sub/b.py:2 (in a function): from .. import c" in report
    assert "pkg.d" not in report and "pkg.e" not in report and "pkg.c -> pkg.c" not in report


def test_cycle_finder_is_quiet_on_a_layered_tree(tmp_path: Path):
    _tree(tmp_path, {
        "app/__init__.py": "from app.core import engine\n",
        "app/core/__init__.py": "from .engine import Engine\nfrom . import state\n",
        "app/core/engine.py": "from app.core import state\nfrom app.core.state import fold\n",
        "app/core/state.py": "def fold(): ...\n",
        "app/ui.py": "import app.core.engine\nimport importlib\nimportlib.import_module('app.core.state')\n",
    })
    graph = import_graph(tmp_path, ("app",))
    assert set(graph.targets("app.ui")) == {"app.core", "app.core.engine", "app.core.state"}
    assert describe_cycles(graph) == ""

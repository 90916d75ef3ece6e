"""No module of `nlpkit` imports one that imports it back.

A cycle works only as long as each module happens to define what the other
needs before the import runs, and an import hidden inside a function is the
usual way to paper over one, so both kinds count. The graph is read from the
source with `ast` (nothing is imported), which also keeps this test fast and
independent of optional dependencies.

What counts as an edge `a -> b` (`b` a module of the same package):

- `import b` and `from b import name`, anywhere in `a`: module level, inside
  functions, classes, `try` blocks;
- relative imports, resolved against `a`'s package;
- `from pkg import x` is an edge to `pkg.x` when `x` is a submodule, else to
  `pkg` itself (its `__init__.py` provides `x`);
- an import of a module not in the package's folder resolves to the closest
  enclosing module that is (`import pkg.sub.missing` -> `pkg.sub`).

Not edges: imports under `if TYPE_CHECKING:`, which never run (nlpkit's
`__init__.py` names its lazily loaded API that way), `importlib` calls on
strings, and the parent packages that Python initialises before a submodule
(they run first anyway, so they cannot be imported "back").
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from pathlib import Path

import pytest

import nlpkit

Graph = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of its first import}


def _module_names(root: Path) -> dict[Path, str]:
    """Dotted module name of every `.py` file under the package folder `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[path] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Collects `(imported module, line)` pairs of one module, resolved against the package."""

    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]  # what `from . import` means here
        self.known = known
        self.found: list[tuple[str, int]] = []

    def _closest(self, name: str) -> str | None:
        while name and name not in self.known:
            name = name.rpartition(".")[0]
        return name or None

    def _add(self, name: str, line: int) -> None:
        target = self._closest(name)
        if target is not None:
            self.found.append((target, line))

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.visit(node.test)
            for child in node.body:
                self.visit(child)
        for child in node.orelse:  # `else:` of TYPE_CHECKING does run
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".")
            if node.level - 1 >= len(base_parts):
                return  # beyond the top-level package: not ours
            base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.known else base, node.lineno)


def import_graph(root: Path) -> Graph:
    """Reads which modules of the package in folder `root` import which others.

    Args:
        root: The package folder (holding `__init__.py`); its name is the
            package name.

    Returns:
        For every module of the package (dotted names, `root.name` first),
        the modules of the same package it imports, each with the
        `file:line` of its first import statement. Self-imports are left out.
    """
    names = _module_names(root)
    known = set(names.values())
    graph: Graph = {}
    for path, module in names.items():
        collector = _ImportCollector(module, path.name == "__init__.py", known)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges: dict[str, str] = {}
        for target, line in sorted(collector.found, key=lambda found: found[1]):
            if target != module:
                edges.setdefault(target, f"{path.relative_to(root.parent).as_posix()}:{line}")
        graph[module] = edges
    return graph


def _strongly_connected(graph: Graph) -> list[set[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _shortest_path(graph: Graph, start: str, goal: str, within: set[str]) -> list[str]:
    """Breadth-first `start ... goal` through the modules in `within` (a path exists)."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for child in sorted(graph[node]):
            if child in within and child not in previous:
                previous[child] = node
                queue.append(child)
    path = [goal]
    while previous[path[-1]] is not None:
        path.append(previous[path[-1]])
    return path[::-1]


def find_cycles(graph: Graph) -> list[list[str]]:
    """Import cycles, each as a chain `[a, b, ..., a]`, sorted.

    Listing every elementary cycle can explode combinatorially, so this lists,
    for every import edge `a -> b` that lies on a cycle, the shortest cycle
    through it: each mutual import `a <-> b` appears as itself, and each edge
    to remove to break a cycle is shown in at least one chain. A chain starts
    at its alphabetically first module, so each cycle appears once.
    """
    cycles: set[tuple[str, ...]] = set()
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue  # self-imports are not in the graph
        for node in component:
            for child in graph[node]:
                if child in component:
                    loop = [node, *_shortest_path(graph, child, node, component)][:-1]
                    first = loop.index(min(loop))
                    loop = loop[first:] + loop[:first]
                    cycles.add((*loop, loop[0]))
    return [list(cycle) for cycle in sorted(cycles)]


def describe(cycle: list[str], graph: Graph) -> str:
    """`a -> b -> a`, then where each of those imports is."""
    where = ", ".join(graph[a][b] for a, b in itertools.pairwise(cycle))
    return f"{' -> '.join(cycle)}  ({where})"


# ---------------------------------------------------------------------------
# The graph builder on tiny synthetic packages
# ---------------------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, source in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root


def test_a_function_level_import_back_is_a_cycle(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "a.py": "from pkg import b\n",  # `b` is a submodule: an edge to pkg.b, not to pkg
        "b.py": "def late():\n    from . import a\n    return a\n",
    })
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b": "pkg/a.py:1"} and graph["pkg.b"] == {"pkg.a": "pkg/b.py:2"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert describe(find_cycles(graph)[0], graph) == "pkg.a -> pkg.b -> pkg.a  (pkg/a.py:1, pkg/b.py:2)"


def test_relative_imports_resolve_from_subpackages(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "sub/__init__.py": "from .x import thing\n",
        "sub/x.py": "from ..y import helper\nthing = 1\n",
        "y.py": "class C:\n    def m(self):\n        import pkg.sub.x.thing\n",  # not a module: resolves to pkg.sub.x
    })
    graph = import_graph(root)
    assert graph["pkg.sub"] == {"pkg.sub.x": "pkg/sub/__init__.py:1"}
    assert graph["pkg.sub.x"] == {"pkg.y": "pkg/sub/x.py:1"}
    assert find_cycles(graph) == [["pkg.sub.x", "pkg.y", "pkg.sub.x"]]


def test_importing_a_name_from_the_package_is_an_edge_to_its_init(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "from pkg.core import run\nVERSION = 1\n",
        "core.py": "def run():\n    from pkg import VERSION\n    return VERSION\n",
    })
    assert find_cycles(import_graph(root)) == [["pkg", "pkg.core", "pkg"]]


def test_a_longer_cycle_is_one_chain_and_a_chain_per_mutual_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "a.py": "import pkg.b\n",
        "b.py": "from . import c\n",
        "c.py": "from .a import x\nfrom .d import y\n",
        "d.py": "from .c import z\n",
    })
    assert find_cycles(import_graph(root)) == [
        ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        ["pkg.c", "pkg.d", "pkg.c"],
    ]


def test_type_checking_imports_and_outside_modules_are_no_edges(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
        "a.py": "import os\nimport typing\nfrom pkg import b\nif typing.TYPE_CHECKING:\n    from . import b\n"
                "else:\n    import pkg\nclass A: ...\n",
        "b.py": "import pkgother\nfrom ... import nothing\n",
    })
    graph = import_graph(root)
    assert graph == {"pkg": {}, "pkg.a": {"pkg.b": "pkg/a.py:3", "pkg": "pkg/a.py:7"}, "pkg.b": {}}
    assert find_cycles(graph) == []


# ---------------------------------------------------------------------------
# The nlpkit package itself
# ---------------------------------------------------------------------------

NLPKIT = Path(nlpkit.__file__).parent


def test_the_graph_of_nlpkit_is_read() -> None:
    # Guards the test below against a builder that silently finds nothing.
    graph = import_graph(NLPKIT)
    assert "nlpkit.backbones.cpu" in graph["nlpkit.backbones.layers"]
    assert "nlpkit.backbones.layers" in graph["nlpkit.backbones.decoder"]


def test_no_module_of_nlpkit_imports_one_that_imports_it_back() -> None:
    graph = import_graph(NLPKIT)
    cycles = find_cycles(graph)
    if cycles:
        pytest.fail("import cycles in nlpkit:\n" + "\n".join(describe(cycle, graph) for cycle in cycles), pytrace=False)

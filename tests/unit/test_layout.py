"""Package layout: no import cycles among the module-level imports of mmfusion's modules.

The graph is read from the source with `ast` (nothing is imported): an edge M -> T for every module-level
`import`/`from ... import` in M that names an mmfusion module T, plus T's parent packages (importing
`mmfusion.a.b` runs `mmfusion/a/__init__.py` first) unless M sits inside them. Imports inside functions and under
`if TYPE_CHECKING:` do not run at import time and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "mmfusion"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]):
    """Import statements that run when the module is imported: the top level and its if/try/with blocks."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the mmfusion modules its module-level imports load."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    packages = {module_name(p, root) for p in (root / package).rglob("__init__.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name if name in packages else name.rpartition(".")[0]  # the package relative imports start from
        targets: set[str] = set()
        for node in _module_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files)  # `from pkg import submodule`
        edges: set[str] = set()
        for target in targets:
            if target not in files:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the target and each parent package below `mmfusion` itself
                step = ".".join(parts[:i])
                if not (name == step or name.startswith(step + ".")):  # a module's own packages are already loading
                    edges.add(step)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; self-imports are ignored."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_is_read_from_the_source():
    graph = import_graph(ROOT)
    assert "mmfusion.cli" in graph and "mmfusion.export.tracking" in graph
    assert "mmfusion.export.files" in graph["mmfusion.export.tracking"]  # a module-level import is an edge
    assert "mmfusion.errors" in graph["mmfusion.cli"]


def test_a_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")
    (pkg / "sub" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\nA = 1\n")
    (pkg / "sub" / "b.py").write_text("from .a import A\nB = A\n")
    (pkg / "c.py").write_text("from pkg.sub.a import A\n\ndef f():\n    from pkg import d\n")
    (pkg / "d.py").write_text("from pkg import c\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg.sub.a"} and graph["pkg.c"] == {"pkg.sub", "pkg.sub.a"}
    assert cycles(graph) == []  # TYPE_CHECKING and function-level imports are not edges; a package's own init is not
    (pkg / "sub" / "a.py").write_text("import pkg.c\nA = 1\n")
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.c", "pkg.sub", "pkg.sub.a", "pkg.sub.b"]]


def test_no_import_cycles_in_mmfusion():
    found = cycles(import_graph(ROOT))
    if found:
        pytest.fail("import cycles among module-level imports:\n" + "\n".join(" <-> ".join(c) for c in found))


def test_test_modules_have_unique_basenames():
    """The lanes have no __init__.py, so pytest imports test modules by basename: two `test_x.py` in tests/unit and
    tests/e2e break collection of the whole suite (`import file mismatch`)."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, clashes

"""The package's imports form no cycle, between modules and between subpackages.

Every ``import`` statement of every module counts, the lazy ones inside functions too: a lazy
import hides a cycle from the interpreter but not from a reader, who still cannot understand
one module without the other. Imports of a module's own enclosing packages are left out (a
package's ``__init__`` re-exports its modules, which would make every package a circle).
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import lora_core

PACKAGE_DIR = Path(lora_core.__file__).resolve().parent
Edges = dict[str, dict[str, str]]   # module -> {imported module: "file:line" of the first such import}


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``package_dir`` (a package's name for its ``__init__``)."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[:len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def imported_modules(path: Path, name: str, known: set[str]) -> dict[str, int]:
    """The known modules that ``name`` (in ``path``) imports, anywhere in the file, with a line of each."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]   # a name may be a module
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.setdefault(target, node.lineno)
    return dict(sorted(found.items(), key=lambda item: item[1]))


def module_graph(package_dir: Path) -> Edges:
    files = module_files(package_dir)
    root = package_dir.parent
    return {name: {target: f"{path.relative_to(root)}:{line}"
                   for target, line in imported_modules(path, name, set(files)).items()}
            for name, path in files.items()}


def subpackages(package_dir: Path) -> set[str]:
    return {f"{package_dir.name}.{p.name}" for p in package_dir.iterdir() if (p / "__init__.py").is_file()}


def package_graph(modules: Edges, package_dir: Path) -> Edges:
    """The same imports between units: each subpackage (``lora_core.toy``) and each top-level module."""
    root, packages = package_dir.name, subpackages(package_dir)

    def unit(module: str) -> str:
        return next((p for p in packages if module == p or module.startswith(p + ".")), module)

    units: Edges = {}
    for module, targets in modules.items():
        edges = units.setdefault(unit(module), {})
        for target, where in targets.items():
            if unit(target) not in (unit(module), root):
                edges.setdefault(unit(target), f"{where} imports {target}")
    return {name: edges for name, edges in units.items() if name != root}


def cycles(graph: Edges) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one node, as a path
    ``[a, b, ..., a]`` from the component's first name."""
    starts = sorted(min(component) for component in _strongly_connected(graph) if len(component) > 1)
    components = {min(c): c for c in _strongly_connected(graph)}
    return [_shortest_cycle(graph, components[start], start) for start in starts]


def _shortest_cycle(graph: Edges, component: set[str], start: str) -> list[str]:
    """Breadth-first from ``start`` inside its component until an edge leads back to it."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph.get(node, {})):
            if target == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return path[::-1] + [start]
            if target in component and target not in previous:
                previous[target] = node
                queue.append(target)
    raise AssertionError(f"{start} lies on no cycle of its component {sorted(component)}")


def _strongly_connected(graph: Edges) -> list[set[str]]:
    """Kosaraju: order by finishing time, then collect on the reversed graph."""
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    order, seen = [], set()
    for root in nodes:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(sorted(graph.get(root, {}))))]
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if c not in seen), None)
            if child is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(child)
                stack.append((child, iter(sorted(graph.get(child, {})))))
    reverse: dict[str, set[str]] = {n: set() for n in nodes}
    for node, targets in graph.items():
        for target in targets:
            reverse[target].add(node)
    components, assigned = [], set()
    for root in reversed(order):
        if root in assigned:
            continue
        component, stack = set(), [root]
        while stack:
            node = stack.pop()
            if node not in assigned:
                assigned.add(node)
                component.add(node)
                stack.extend(reverse[node] - assigned)
        components.append(component)
    return components


def describe(cycle: list[str], graph: Edges) -> str:
    """``a -> b -> a`` and, for each step, where the import is."""
    steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(steps)


def cycle_report(package_dir: Path) -> list[str]:
    modules = module_graph(package_dir)
    packages = package_graph(modules, package_dir)
    through_a_subpackage = [c for c in cycles(packages) if set(c) & subpackages(package_dir)]  # others: above
    return [describe(c, modules) for c in cycles(modules)] + [describe(c, packages) for c in through_a_subpackage]


def test_no_import_cycle_in_lora_core():
    report = cycle_report(PACKAGE_DIR)
    assert not report, "\n".join(report)


def test_every_module_is_walked_including_lazy_imports():
    modules = module_graph(PACKAGE_DIR)
    assert {"lora_core.world", "lora_core.toy.__main__", "lora_core.metrics.style"} <= set(modules)
    # toy/check.py imports lora_core.toy.card only inside run_checks
    assert "lora_core.toy.card" in modules["lora_core.toy.check"]
    assert set(modules["lora_core.world"]) <= {"lora_core.paths"}, "the world's vocabulary must stay a leaf"
    assert not modules["lora_core.paths"], "the project root must stay a leaf"


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_cycle_report_names_a_module_cycle_through_a_lazy_import(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "from pkg.a import thing\n",
        "a.py": "from pkg.b import other\nthing = 1\n",
        "b.py": "def other():\n    from . import c\n",
        "c.py": "import pkg.a\n",
        "d.py": "from pkg import a\n",
    })
    report = cycle_report(package)
    assert report == ["import cycle: pkg.a -> pkg.b -> pkg.c -> pkg.a\n"
                      "  pkg.a -> pkg.b (pkg/a.py:1)\n"
                      "  pkg.b -> pkg.c (pkg/b.py:2)\n"
                      "  pkg.c -> pkg.a (pkg/c.py:1)"]


def test_cycle_report_names_a_package_cycle(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "world.py": "",
        "metrics/__init__.py": "",
        "metrics/style.py": "from pkg.world import x\n\ndef f():\n    from pkg.toy.build import DATA\n",
        "toy/__init__.py": "from pkg.toy.build import DATA\n",
        "toy/build.py": "from pkg.world import x\nDATA = 1\n",
        "toy/check.py": "from pkg.metrics import style\n",
    })
    report = cycle_report(package)
    assert report == ["import cycle: pkg.metrics -> pkg.toy -> pkg.metrics\n"
                      "  pkg.metrics -> pkg.toy (pkg/metrics/style.py:4 imports pkg.toy.build)\n"
                      "  pkg.toy -> pkg.metrics (pkg/toy/check.py:1 imports pkg.metrics)"]
    (package / "metrics" / "style.py").write_text("from pkg.world import x\n")
    assert cycle_report(package) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b": ""}, "b": {"a": ""}}, [["a", "b", "a"]]),
    ({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": "", "d": ""}, "d": {}}, [["a", "b", "c", "a"]]),
    ({"a": {"b": "", "c": ""}, "b": {"a": ""}, "c": {"a": ""}}, [["a", "b", "a"]]),
    ({"a": {"b": ""}, "b": {"c": ""}, "c": {}}, []),
])
def test_cycles_on_small_graphs(graph, expected):
    assert cycles(graph) == expected

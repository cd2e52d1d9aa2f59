"""The shape of the package, read from its own imports (``ast``: nothing is imported).

Two rules, both written in the Layout table of docs/development.md (checked below to say the same):
- no import loops between ferry's modules: every import counts, at the top of a module, inside
  a function or under ``TYPE_CHECKING``;
- one direction of dependency: each part of ferry (a subpackage, a module at the top, or the
  root package's ``__init__``, named ``ferry``) imports only the ground and the parts that
  ``MAY_IMPORT`` names for it, all of them listed before it.

``import a.b.c`` and ``from a.b.c import x`` depend on module ``a.b.c`` (on ``a.b.c.x`` when
``x`` is a submodule) and on the ``__init__`` of each package on the way (``a``, ``a.b``), which
Python runs first, except the importer's own packages, which are already being imported.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "ferry"

# The ground imports nothing of ferry, and every part may import it.
GROUND = {"errors", "settings", "_k8s", "_modeluri", "_submission", "_timing"}
# Bottom up: each part may import the ground and these parts (each named before it), nothing else.
MAY_IMPORT: dict[str, set[str]] = {
    "spec": set(),
    "ferry": {"spec"},
    "images": {"ferry"},
    "scaffold": {"ferry", "images"},
    "render": {"spec", "images"},
    "validate": set(),
    "runtime": {"spec", "render"},
    "code": {"spec", "runtime"},
    "local": {"spec", "render", "runtime", "code"},
    "kube": {"spec", "render"},
    "serve": {"ferry"},
    "gitops": {"spec", "render"},
    "registry": {"spec", "render", "serve"},
    "optimize": {"spec", "runtime", "local", "serve"},
    "sweep": {"spec", "render", "runtime", "code", "local", "kube"},
    "plan": {"local", "registry"},
    "cli": {"spec", "ferry", "images", "scaffold", "render", "validate", "runtime", "code", "local", "kube", "serve",
            "gitops", "registry", "optimize", "sweep", "plan"},
    "demo": {"spec", "render", "validate", "local", "registry", "optimize", "sweep", "cli"},
    "__main__": {"cli"},
}


def modules() -> dict[str, Path]:
    """Every module of ferry by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _packages_of(name: str) -> list[str]:
    """``a.b.c`` → ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def imports_of(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The ferry modules ``name`` imports, each with the line of its first import."""
    is_package = path.name == "__init__.py"
    own_packages = {*_packages_of(name), *([name] if is_package else [])}
    deps: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in known:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target and target != name:
            deps.setdefault(target, line)

    def depend(module: str, line: int) -> None:
        add(module, line)
        for package in _packages_of(module):
            if package not in own_packages:
                add(package, line)

    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ferry" or alias.name.startswith("ferry."):
                    depend(alias.name, node.lineno)
            continue
        if node.level:  # relative: from the importer's package, up level - 1
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if not (module == "ferry" or module.startswith("ferry.")):
            continue
        for alias in node.names:
            if f"{module}.{alias.name}" in known:  # from a package import a submodule
                depend(f"{module}.{alias.name}", node.lineno)
            else:
                depend(module, node.lineno)
    return deps


@functools.cache
def graph() -> dict[str, dict[str, int]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest loop through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_shortest_loop(edges, group) for group in groups]


def _shortest_loop(edges: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    members, start = set(group), group[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no loop through {start}")  # pragma: no cover - a strongly connected group has one


def part(module: str) -> str:
    """The part of ferry a module belongs to: ``ferry.kube._client`` → ``kube``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ferry"


def _describe(edges: dict[str, dict[str, int]], loop: list[str]) -> str:
    steps = [f"{a} (line {edges[a][b]})" for a, b in zip(loop, loop[1:])]
    return " → ".join(steps + [loop[-1]])


# ---- the walker itself --------------------------------------------------------------------------
def test_the_walker_reads_every_kind_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import ferry.kube._client\nfrom . import _b\nfrom .. import settings\n"
                      "def f():\n    from ferry.render import dump_yaml\n"
                      "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ferry.serve._app import X\n")
    known = {"ferry", "ferry.kube", "ferry.kube._client", "ferry.kube._b", "ferry.kube._m", "ferry.settings",
             "ferry.render", "ferry.render._output", "ferry.serve", "ferry.serve._app"}
    deps = imports_of("ferry.kube._m", source, known)
    # ferry.kube is the importer's own package: already being imported, not a dependency
    assert set(deps) == {"ferry.kube._client", "ferry.kube._b", "ferry.settings", "ferry.render",
                         "ferry.serve", "ferry.serve._app"}


def test_a_loop_is_found_and_named():
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    (loop,) = cycles(edges)
    assert loop == ["a", "b", "c", "a"]
    assert _describe(edges, loop) == "a (line 1) → b (line 2) → c (line 3) → a"


def test_every_part_has_its_rule():
    parts = {part(module) for module in modules()}
    ruled = GROUND | set(MAY_IMPORT)
    assert parts - ruled == set(), "a new part of ferry: give it its row in MAY_IMPORT (and in the Layout table of docs/development.md)"
    assert ruled - parts == set(), "MAY_IMPORT or GROUND names a part that no longer exists"


def test_the_rule_runs_one_way():
    below: set[str] = set()
    for name, allowed in MAY_IMPORT.items():
        assert allowed <= below, f"{name} may import {sorted(allowed - below)}, which come after it in MAY_IMPORT"
        below.add(name)


# ---- ferry ----------------------------------------------------------------------------------------
def test_no_import_loops_inside_ferry():
    edges = graph()
    loops = [_describe(edges, loop) for loop in cycles(edges)]
    assert not loops, "import loops (give the shared piece one home below both):\n" + "\n".join(loops)


def test_imports_run_down_the_layers():
    wrong = []
    for module, deps in graph().items():
        here = part(module)
        allowed = set() if here in GROUND else GROUND | MAY_IMPORT.get(here, set())
        for target, line in sorted(deps.items()):
            there = part(target)
            if there != here and there not in allowed:
                wrong.append(f"{module} (line {line}) imports {target}: {here} may import "
                             f"{', '.join(sorted(allowed)) or 'nothing of ferry'}")
    assert not wrong, "imports against the layering (see MAY_IMPORT and the Layout table of docs/development.md):\n" + "\n".join(wrong)


def _readme_rule() -> tuple[set[str], dict[str, set[str]]]:
    """The ground and the rows of the Layout table of docs/development.md, as written there: a row's paths
    (``ferry/kube``, ``ferry/cli/``, ``ferry/images.py``, ``ferry/__init__.py``) and what they
    may import (``nothing of Ferry``: the ground; ``—``; ``everything above``; or the names)."""
    header_line = "| path | imports (besides the ground) | what |"
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    lines = next((page.read_text().splitlines() for page in pages if page.is_file()
                  and header_line in page.read_text().splitlines()), [])
    assert lines, f"the layering table ({header_line}) is in neither README.md nor docs/"
    header = lines.index(header_line)
    ground: set[str] = set()
    rows: dict[str, set[str]] = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        path, imports = (cell.strip() for cell in line.strip("|").split("|")[:2])
        paths = re.findall(r"`([^`]+)`", path)
        if not all(p.startswith("ferry/") for p in paths):
            continue  # jobs/, operator/, ...: not part of the ferry package
        names = ["ferry" if p == "ferry/__init__.py" else p.removeprefix("ferry/").rstrip("/").removesuffix(".py")
                 for p in paths]
        if imports == "nothing of Ferry":
            ground.update(names)
            continue
        allowed = (set(rows) if imports == "everything above" else set() if imports == "—"
                   else set(re.findall(r"`([^`]+)`", imports)))
        rows.update(dict.fromkeys(names, allowed))
    return ground, rows


def test_the_readme_states_the_rule():
    ground, rows = _readme_rule()
    assert ground == GROUND
    assert rows == MAY_IMPORT
    assert list(rows) == list(MAY_IMPORT), "the Layout table's rows are in MAY_IMPORT's order (each imports only rows above it)"


@pytest.mark.parametrize("module", sorted(f"ferry.{name}" for name in GROUND))
def test_the_ground_imports_nothing_of_ferry(module):
    assert graph()[module] == {}

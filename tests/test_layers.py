"""The import graph of ``src/mrisr``: layers that point one way, siblings that stay apart, no
cycle between modules or between packages.

Every module is parsed with :mod:`ast` (nothing is imported, so no import side effect hides
or adds an edge); every ``import`` and ``from ... import`` counts, relative ones and those
inside functions included. The layers, from the top (README, "Layout"):

    cli -> demo -> evaluation -> inference -> training -> models | data
        -> io | degradation | resample -> grid | config | registry | devices | precision | progress
        | configs | mrisr (the package root) -> errors

A module may import its own group and any lower layer; groups side by side on one layer
("models | data") import neither each other nor anything above.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mrisr

SRC = Path(mrisr.__file__).resolve().parent

#: Group (a package or module of mrisr) -> layer; higher layers may import lower ones.
LAYERS = {
    "mrisr.cli": 8,
    "mrisr.demo": 7,
    "mrisr.evaluation": 6,
    "mrisr.inference": 5,
    "mrisr.training": 4,
    "mrisr.models": 3, "mrisr.data": 3,
    "mrisr.io": 2, "mrisr.degradation": 2, "mrisr.resample": 2,
    "mrisr.grid": 1, "mrisr.config": 1, "mrisr.registry": 1, "mrisr.devices": 1,
    "mrisr.precision": 1,
    "mrisr.progress": 1, "mrisr.configs": 1, "mrisr": 1,
    "mrisr.errors": 0,
}


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package ``__init__``) of every module of mrisr."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ["mrisr", *path.relative_to(SRC).with_suffix("").parts]
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, package)
    return found


def import_source(package: str, level: int, module: str | None) -> str:
    """The module a ``from`` import reads: ``from ..models import x`` (level 2) in package
    ``mrisr.inference`` reads ``mrisr.models``."""
    if not level:
        return module or ""
    base = package.split(".")
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported mrisr module: line of the first such import}. ``from X import y``
    points at ``X.y`` when that is a module, else at ``X``."""
    mods = modules()
    graph: dict[str, dict[str, int]] = {}
    for name, (path, package) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = name if package else name.rpartition(".")[0]
        found: list[tuple[str, int]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = import_source(here, node.level, node.module)
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    found.append((full if full in mods else source, node.lineno))
        edges: dict[str, int] = {}
        for target, line in sorted(found, key=lambda item: item[1]):
            if target.split(".")[0] == "mrisr" and target != name:
                edges.setdefault(target, line)
        unknown = [t for t in edges if t not in mods]
        assert not unknown, f"{name} imports unknown mrisr modules {unknown}"
        graph[name] = edges
    return graph


def group(module: str) -> str:
    """The entry of :data:`LAYERS` a module belongs to (its longest matching prefix)."""
    best = max((g for g in LAYERS if module == g or module.startswith(g + ".")), key=len,
               default=None)
    assert best is not None, f"{module}: not in the layer table; add it to LAYERS"
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (as a closed path), or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []
    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_every_module_has_a_layer():
    for name in modules():
        group(name)


def test_imports_point_down_and_siblings_stay_apart():
    problems = []
    for name, edges in import_graph().items():
        src = group(name)
        for target, line in edges.items():
            dst = group(target)
            if dst == src:
                continue
            if LAYERS[dst] > LAYERS[src]:
                problems.append(f"{name}:{line} imports {target}: {src} (layer {LAYERS[src]}) "
                                f"is below {dst} (layer {LAYERS[dst]})")
            elif LAYERS[dst] == LAYERS[src]:
                problems.append(f"{name}:{line} imports {target}: {src} and {dst} are side by "
                                f"side (layer {LAYERS[src]})")
    assert not problems, "\n".join(problems)


def test_no_cycle_between_modules():
    graph = {name: set(edges) for name, edges in import_graph().items()}
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_between_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for name, edges in import_graph().items():
        for target in edges:
            if group(target) != group(name):
                packages[group(name)].add(group(target))
    cycle = find_cycle(packages)
    assert not cycle, "package cycle: " + " -> ".join(cycle)


def test_the_checker_sees_what_it_must():
    """The graph reader itself: relative imports, imports inside functions, a cycle."""
    graph = import_graph()
    # Imports inside functions count (the CLI imports its commands' modules lazily).
    assert "mrisr.inference.batch" in graph["mrisr.cli.main"]
    # ``from mrisr.models import registry`` points at the submodule.
    assert "mrisr.models.registry" in graph["mrisr.models.loading"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    assert import_source("mrisr.inference", 2, "models") == "mrisr.models"
    assert import_source("mrisr.inference", 1, None) == "mrisr.inference"
    assert import_source("mrisr.inference", 1, "tiling") == "mrisr.inference.tiling"
    assert import_source("mrisr.inference", 0, "mrisr.grid") == "mrisr.grid"

"""Imports inside ``adtn`` run one way, and no private name crosses a module.

The test parses every ``.py`` under ``adtn/`` (no import is executed), resolves relative
imports, and collects every import statement, including the ones inside functions: a
deferred import that only exists to break a circle is still a circle.

Rules, so that a failure is unambiguous:

- ``from P import n`` makes an edge to ``P.n`` when ``P.n`` is a module of the package,
  otherwise to ``P`` (``P/__init__.py`` when ``P`` is a package). ``import P.Q`` makes an edge
  to ``P.Q``.
- Python imports a package's ``__init__`` before any of its submodules; that implicit step is
  not an edge. A package ``__init__`` importing (re-exporting) its own children is an ordinary
  edge, so a child is in a circle with its package only when it imports the package's own
  ``__init__`` names explicitly (``from adtn.layers import TNLinear`` inside ``adtn/layers``).
- Imports under ``if TYPE_CHECKING:`` never run and are not edges (names for annotations).
- A circle is any strongly connected set of two or more modules; the test names each set and
  one circle through it.
- A private name is one starting with ``_`` that is not a dunder. ``from .x import _name`` and
  ``x._name``, where ``x`` is bound to an ``adtn`` module by an import, fail when ``x`` is
  another module (a package's ``__init__`` using its children's private names also counts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent / "adtn"


def _module_names() -> dict[str, Path]:
    """Dotted name -> file for every module of the package."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _scan(module: str) -> tuple[set[str], list[str]]:
    """(modules imported by ``module``, private-name violations as 'module:line name from x')."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    for node in ast.walk(tree):  # drop the annotation-only imports
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    edges: set[str] = set()
    bad: list[str] = []
    bound: dict[str, str] = {}  # local name -> adtn module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    edges.add(alias.name)
                    bound[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name or alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            if base not in MODULES:
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                if child in MODULES:
                    edges.add(child)
                    bound[alias.asname or alias.name] = child
                    continue
                edges.add(base)
                if _private(alias.name) and base != module:
                    bad.append(f"{module}:{node.lineno} imports {alias.name} from {base}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = bound.get(node.value.id)
            if target is not None and target != module:
                bad.append(f"{module}:{node.lineno} reads {node.value.id}.{node.attr} of {target}")
    edges.discard(module)
    return edges, bad


def _graph() -> tuple[nx.DiGraph, list[str]]:
    graph = nx.DiGraph()
    bad: list[str] = []
    for module in MODULES:
        graph.add_node(module)
        edges, violations = _scan(module)
        graph.add_edges_from((module, target) for target in edges)
        bad += violations
    return graph, bad


def test_scanner_sees_every_module_and_relative_import() -> None:
    graph, _ = _graph()
    assert "adtn.layers.linear" in graph and "adtn.api" in graph
    # adtn/__init__.py re-exports encode from .api: a resolved relative edge.
    assert graph.has_edge("adtn", "adtn.api")
    assert graph.has_edge("adtn.layers", "adtn.layers.linear")


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    circles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            cycle = nx.find_cycle(graph.subgraph(component))
            path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
            circles.append(f"{sorted(component)}: {path}")
    assert not circles, "import circles between adtn modules:\n" + "\n".join(sorted(circles))


def test_no_private_names_cross_modules() -> None:
    _, bad = _graph()
    assert not bad, "private names used across adtn modules:\n" + "\n".join(sorted(bad))


def test_old_import_paths_and_pickled_names_still_resolve() -> None:
    """Code moved down the layers keeps its user-facing names: adtn.api still re-exports the
    option language and ``initialize``, and a model pickled with the old ``_Buffers`` class loads."""
    import io
    import pickle

    import torch

    import adtn
    import adtn.api
    import adtn.module
    from adtn.layers.initialize import initialize
    from adtn.options import resolve

    assert adtn.api.resolve is resolve and adtn.api.initialize is initialize
    assert adtn.api.encode is adtn.encode and adtn.api.save is adtn.save
    old = adtn.module.Buffers({"a": torch.ones(2)})
    cls = type(old)
    name = (cls.__module__, cls.__qualname__)
    cls.__module__, cls.__qualname__ = "adtn.module", "_Buffers"  # as written before the rename and the move
    try:
        data = pickle.dumps(old)
    finally:
        cls.__module__, cls.__qualname__ = name
    assert b"_Buffers" in data and b"adtn.module" in data
    loaded = pickle.load(io.BytesIO(data))
    assert isinstance(loaded, adtn.module.Buffers) and loaded["a"].sum() == 2


def test_layer_names_keep_their_import_path_after_the_split() -> None:
    """``adtn.layers.linear`` was split (base: TNLayer, encode: building from a dense layer); the
    names it exported still import from it, as the same objects."""
    from adtn.layers import TNLayer, TNLinear, base, linear

    assert linear.TNLayer is base.TNLayer is TNLayer and linear.TNLinear is TNLinear
    assert linear.CHOICES == base.CHOICES and linear.compile_structure is base.compile_structure
    assert set(linear.__all__) == {"CHOICES", "TNLayer", "TNLinear", "compile_structure"}
    assert TNLinear.__module__ == "adtn.layers.linear"  # pickled models name this path

"""Helpers shared by the test-suite: random graphs, an independent ncon oracle, devices."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .graph import TensorGraph
from .templates import TEMPLATES

__all__ = ["TEMPLATE_EXAMPLES", "brickwall", "devices", "ncon_dense", "random_graph", "rel_error", "tt_chain"]

class _Examples(Mapping[str, tuple[dict[str, int], dict[str, Any]]]):
    """A small, readable example per format, ``(axes, options)``, read live from the registry
    (``Format.example``), so a format registered later has its own. Registry-wide tests and the
    docs' pictures use these; a format without one is tried with a generic linear example."""

    def _found(self) -> dict[str, tuple[dict[str, int], dict[str, Any]]]:
        return {n: (dict(f.example[0]), dict(f.example[1])) for n, f in TEMPLATES.items() if f.example is not None}

    def __getitem__(self, name: str) -> tuple[dict[str, int], dict[str, Any]]:
        return self._found()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._found())

    def __len__(self) -> int:
        return len(self._found())


TEMPLATE_EXAMPLES: Mapping[str, tuple[dict[str, int], dict[str, Any]]] = _Examples()


def random_graph(
    rng: random.Random, n_nodes: tuple[int, int] = (2, 8), sizes: tuple[int, int] = (1, 4), max_open: int = 6
) -> TensorGraph:
    """A random connected graph: a random spanning tree plus a few extra bonds (cycles,
    multi-bonds), open legs spread over 1-3 output axes. Dense size stays small."""
    n = rng.randint(*n_nodes)
    g = TensorGraph(f"random{n}")
    legs: dict[str, dict[str, int]] = {f"n{k}": {} for k in range(n)}
    bonds: list[tuple[str, str, str, str]] = []

    def new_leg(node: str, size: int) -> str:
        name = f"l{len(legs[node])}"
        legs[node][name] = size
        return name

    order = list(legs)
    rng.shuffle(order)
    for k in range(1, n):
        u, v = order[k], order[rng.randrange(k)]
        size = rng.randint(*sizes)
        bonds.append((u, new_leg(u, size), v, new_leg(v, size)))
    for _ in range(rng.randint(0, n)):
        u, v = rng.sample(list(legs), 2)
        size = rng.randint(*sizes)
        bonds.append((u, new_leg(u, size), v, new_leg(v, size)))
    open_legs = []
    for _ in range(rng.randint(1, max_open)):
        node = rng.choice(list(legs))
        open_legs.append((node, new_leg(node, rng.randint(*sizes))))
    for node, node_legs in legs.items():
        if not node_legs:
            open_legs.append((node, new_leg(node, rng.randint(*sizes))))
    for node, node_legs in legs.items():
        g.add_node(node, legs=node_legs)
    for u, lu, v, lv in bonds:
        g.bond((u, lu), (v, lv))
    rng.shuffle(open_legs)
    n_axes = rng.randint(1, min(3, len(open_legs)))
    cuts = sorted(rng.sample(range(1, len(open_legs)), n_axes - 1)) if n_axes > 1 else []
    parts = [open_legs[a:b] for a, b in zip([0] + cuts, cuts + [len(open_legs)])]
    g.set_outputs({f"ax{k}": part for k, part in enumerate(parts)})
    return g.freeze()


def ncon_dense(graph: TensorGraph, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Contract ``graph`` with tensornetwork's ``ncon`` (numpy backend): an independent oracle."""
    import tensornetwork as tn

    labels: dict[Any, int] = {}
    for k, bond in enumerate(graph.bonds, start=1):
        labels[bond.a] = labels[bond.b] = k
    out = -1
    for legs in graph.outputs.values():
        for leg in legs:
            labels[leg] = out
            out -= 1
    arrays, networks = [], []
    for name in graph.nodes:
        arrays.append(tensors[name].detach().cpu().double().numpy())
        networks.append([labels[graph.leg((name, leg))] for leg in graph.legs(name)])
    result = tn.ncon(arrays, networks, backend="numpy")
    shape = tuple(graph.axis_sizes.values())
    return torch.as_tensor(result).reshape(shape)


def devices() -> list[Any]:
    """CPU always; CUDA as a parameter that skips when absent (use with pytest.mark.parametrize)."""
    import pytest

    cuda = pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
    )
    return ["cpu", cuda]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error ||a - b|| / ||b||."""
    return float(torch.linalg.vector_norm(a - b) / max(float(torch.linalg.vector_norm(b)), math.ulp(1.0)))


def tt_chain(modes: tuple[int, ...] = (4, 4, 4), rank: int = 3, name: str = "chain") -> TensorGraph:
    """A hand-declared TT-matrix: cores ``c{k}`` with legs (l, o, i, r), square modes."""
    g = TensorGraph(name)
    d = len(modes)
    for k, n in enumerate(modes):
        legs = {"l": rank} if k else {}
        legs.update(o=n, i=n)
        if k < d - 1:
            legs["r"] = rank
        g.add_node(f"c{k}", legs=legs)
    for k in range(d - 1):
        g.bond(f"c{k}.r", f"c{k + 1}.l")
    g.set_outputs({"out": [f"c{k}.o" for k in range(d)], "in": [f"c{k}.i" for k in range(d)]})
    return g.freeze()


def brickwall(q: int = 24, depth: int = 4) -> TensorGraph:
    """A depth-``depth`` brick wall of 2x2x2x2 gates on q legs closed by [1, 0] vectors: the
    planner's stress test (one output axis "state" of 2^q entries)."""
    g = TensorGraph(f"brickwall{q}x{depth}")
    top = {}
    for k in range(q):
        g.add_node(f"v{k}", legs={"s": 2}, role="fixed", value=[1.0, 0.0])
        top[k] = f"v{k}.s"
    n = 0
    for _ in range(depth):
        for start in (0, 1):
            for k in range(start, q - 1, 2):
                name = f"g{n}"
                n += 1
                g.add_node(name, legs={"i0": 2, "i1": 2, "o0": 2, "o1": 2})
                g.bond(top[k], f"{name}.i0")
                g.bond(top[k + 1], f"{name}.i1")
                top[k], top[k + 1] = f"{name}.o0", f"{name}.o1"
    g.set_outputs({"state": [top[k] for k in range(q)]})
    return g.freeze()

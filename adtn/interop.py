"""Interop with Google's ``tensornetwork`` (the optional ``interop`` extra).

Used to hand a compiled network to tensornetwork's contractors and as an independent
oracle in tests; never on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import AdtnError, GraphError
from .graph import TensorGraph
from .module import TNModule

__all__ = ["from_tensornetwork", "to_tensornetwork"]


def _tn() -> Any:
    try:
        import tensornetwork as tn
    except ImportError:  # pragma: no cover - depends on the environment
        raise AdtnError("interop needs tensornetwork: pip install adtn[interop]") from None
    return tn


def to_tensornetwork(module: TNModule, backend: str = "pytorch") -> tuple[list[Any], dict[str, list[Any]]]:
    """Nodes of ``module`` as connected ``tensornetwork.Node`` objects (current values, detached).

    Returns ``(nodes, outputs)`` where ``outputs`` maps each axis to its dangling edges in order.
    """
    tn = _tn()
    graph = module.graph
    if graph.nodes_with_role("input"):
        raise GraphError(f"to_tensornetwork: graph {graph.name!r} has input nodes; feed them first")
    tensors = module.node_tensors()
    nodes = {}
    for name in graph.nodes:
        value = tensors[name].detach()
        if backend == "numpy":
            value = value.cpu().numpy()
        nodes[name] = tn.Node(value, name=name, axis_names=list(graph.legs(name)), backend=backend)
    for bond in graph.bonds:
        nodes[bond.a.node][bond.a.name] ^ nodes[bond.b.node][bond.b.name]
    outputs = {axis: [nodes[leg.node][leg.name] for leg in legs] for axis, legs in graph.outputs.items()}
    return list(nodes.values()), outputs


def from_tensornetwork(
    nodes: Sequence[Any], outputs: Mapping[str, Sequence[Any]], name: str = "from_tensornetwork"
) -> tuple[TensorGraph, dict[str, torch.Tensor]]:
    """A frozen graph plus ``{node name: tensor}`` from tensornetwork nodes and named dangling edges.

    Every node becomes a ``param`` node; compile with ``adtn.compile(graph, init=tensors)``.
    """
    graph = TensorGraph(name)
    tensors: dict[str, torch.Tensor] = {}
    leg_of: dict[int, tuple[str, str]] = {}
    for k, node in enumerate(nodes):
        node_name = node.name if node.name and node.name != "__unnamed_node__" else f"n{k}"
        axis_names = node.axis_names or [f"l{i}" for i in range(len(node.shape))]
        graph.add_node(node_name, legs=dict(zip(axis_names, map(int, node.shape))))
        tensors[node_name] = torch.as_tensor(node.tensor)
        for axis_name, edge in zip(axis_names, node.edges):
            leg_of.setdefault(id(edge), (node_name, axis_name))
            if not edge.is_dangling():
                other = edge.node2 if edge.node1 is node else edge.node1
                if other not in nodes:
                    raise GraphError(f"edge {node_name}.{axis_name} leads to a node outside the given list")
    done = set()
    for node in nodes:
        for edge in node.edges:
            if edge.is_dangling() or id(edge) in done:
                continue
            done.add(id(edge))
            a = next(n for n in nodes if n is edge.node1)
            b = next(n for n in nodes if n is edge.node2)
            la = _leg_name(graph, nodes, a, edge.axis1)
            lb = _leg_name(graph, nodes, b, edge.axis2)
            graph.bond(la, lb)
    graph.set_outputs({axis: [leg_of[id(e)] for e in edges] for axis, edges in outputs.items()})
    return graph.freeze(), tensors


def _leg_name(graph: TensorGraph, nodes: Sequence[Any], node: Any, axis: int) -> tuple[str, str]:
    k = list(nodes).index(node)
    name = node.name if node.name and node.name != "__unnamed_node__" else f"n{k}"
    return name, list(graph.legs(name))[axis]

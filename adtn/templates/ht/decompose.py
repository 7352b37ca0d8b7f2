"""Initialiser of the ``ht`` template: hierarchical SVD (Grasedyck 2010) over the graph's tree.

The weight is regrouped by leaf (leaf k's open legs, (o_k, i_k) or (kh, kw), are mode k) and
``adtn.decompose.ht_svd`` runs on it. The tree is read off the graph (a transfer's ``a`` leg
bonds its left child, ``b`` its right one) and must be decompose's balanced tree (first
len // 2 leaves left), which ``build_ht`` uses; frames (n_k, r_k) become leaves (o, i, r),
transfers (r_left, r_right, r) become nodes (a, b, r), the root's (r_a, r_b, 1) becomes (a, b).

``tol``: Grasedyck's bound ||T - T_HT||^2 <= sum over the 2d - 2 non-root nodes of the
discarded squared singular values of that node's matricization, so each node keeps the fewest
singular vectors whose tail is at most tol ||T|| / sqrt(2d - 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ...decompose import ht_svd
from ...decompose.ht import ht_tree
from ...decompose.svd import rank_for_delta
from ...errors import AdtnError
from ...graph import TensorGraph
from ..init_common import initialise, open_legs, regroup

__all__ = ["init_ht"]

Node = tuple[int, ...]


def _tree(graph: TensorGraph) -> tuple[list[str], dict[Node, str], dict[Node, tuple[Node, Node]]]:
    """(leaf nodes in order, tree node -> graph node, tree) read from the graph, checked against
    decompose's dimension tree."""
    params = graph.nodes_with_role("param")
    leaves = [n for n in params if open_legs(graph, n)]
    index = {name: k for k, name in enumerate(leaves)}

    def cover(name: str) -> Node:
        if name in index:
            return (index[name],)
        return cover(graph.partner((name, "a")).node) + cover(graph.partner((name, "b")).node)

    node_of = {cover(n): n for n in params}
    tree = {}
    for name in params:
        if name not in index:
            tree[cover(name)] = (cover(graph.partner((name, "a")).node), cover(graph.partner((name, "b")).node))
    if tree != ht_tree(len(leaves)):
        raise AdtnError(f"ht init: the graph's dimension tree {tree} is not decompose's balanced tree")
    return leaves, node_of, tree


def _matricize(t: Tensor, node: Node) -> Tensor:
    rest = [k for k in range(t.dim()) if k not in node]
    return t.permute(list(node) + rest).reshape(math.prod(t.shape[k] for k in node), -1)


def _tol_ranks(t: Tensor, tree: Mapping[Node, tuple[Node, Node]], tol: float) -> dict[Node, int]:
    delta = tol * float(torch.linalg.vector_norm(t)) / math.sqrt(2 * t.dim() - 2)
    nodes = [child for pair in tree.values() for child in pair]
    return {node: rank_for_delta(torch.linalg.svdvals(_matricize(t, node)), delta) for node in nodes}


def _decompose(dense: Tensor, graph: TensorGraph, tol: float | None) -> dict[str, Tensor]:
    leaves, node_of, tree = _tree(graph)
    groups = [open_legs(graph, n) for n in leaves]
    t = regroup(dense, graph, groups)
    root = tuple(range(len(leaves)))
    if tol is None:
        ranks = {node: graph.legs(name)["r"] for node, name in node_of.items() if node != root}
    else:
        ranks = _tol_ranks(t, tree, tol)
    ht = ht_svd(t, ranks)
    out = {}
    for k, (leaf, group) in enumerate(zip(leaves, groups)):
        out[leaf] = ht.leaves[k].reshape([graph.leg_size(leg) for leg in group] + [-1])
    for node, transfer in ht.transfers.items():
        out[node_of[node]] = transfer[..., 0] if node == root else transfer
    return out


def _spec(graph: TensorGraph, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Rank per non-root node (its ``r`` leg, the last), keyed by node name as the build takes it."""
    return {name: shapes[name][-1] for name in graph.nodes_with_role("param") if "r" in graph.legs(name)}


def init_ht(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, **options: Any
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """Hierarchical SVD of a weight into ``ht``'s graph: (graph, {leaf or transfer: tensor}).

    Args:
        dense: the weight, shaped like ``axes``.
        axes: as for ``build_ht``.
        rank: as for ``build_ht``: an int, a dict node -> rank, or a sequence.
        tol: instead of rank, the relative Frobenius error to reach, in (0, 1).
        **options: ``build_ht``'s other options (modes, d, clip).
    """
    return initialise("ht", dense, axes, rank, tol, options, _decompose, _spec)

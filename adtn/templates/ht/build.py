"""Hierarchical Tucker template: frames at the leaves of a balanced binary dimension tree.

Linear weight ``{"out": O, "in": I}`` with modes (o_k, i_k), k < d: leaf k, node ``leaf{k}``,
is a frame with legs ``(o: o_k, i: i_k, r: r_k)``, carrying the pair like a TT-matrix core
(Wu et al. 2020). Conv weight ``{"out", "in", "kh", "kw"}``: one more leaf, ``leaf{d}``, with
legs ``(kh, kw, r)`` (the spatial kernel, kept whole), so the tree has d + 1 leaves; or, with
``kernel_with=k``, the kernel legs join leaf k (``(o, i, kh, kw, r)``) and the tree has d
leaves: modes ``((O, 1), (1, C))`` with ``kernel_with=1`` are a truncated SVD of the (out,
in*kh*kw) unfolding plus an r x r root.

The tree over leaves 0..L-1 is the one of ``adtn.decompose.ht``: a node (a run of leaves)
splits into its first len // 2 leaves and the rest, e.g. (0, 1, 2) -> (0,), (1, 2). An inner
node is a transfer tensor named ``t`` + its leaves (``t01``, ``t0123``; ``t0_11`` when there
are more than 10 leaves) with legs ``(a: r_left, b: r_right, r: r_node)``; the root has no
``r`` leg (root rank 1). Parameters: sum of the node sizes, for uniform leaf size n and rank
r: d*n*r + (d-2)*r^3 + r^2 (d leaves).

Ranks: an int (every non-root node) or a dict giving every non-root node's rank, keyed by node
name (``"leaf0"``, ``"t01"``) or by its tuple of leaves (``(0,)``, ``(0, 1)``); a sequence is
read in the order leaf0 ... leaf{L-1}, then inner nodes bottom-up (by size, then first leaf).
A rank larger than useful (more than the product of the modes inside or outside the node's
subtree, than its children's ranks multiplied, or than its sibling's rank times its
parent's) raises RankError naming the bond; ``clip=True`` lowers it instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import RankError, TemplateError
from ...graph import TensorGraph
from ..factor import Bound, enforce_ranks, ranks_list, resolve_modes, weight_axes
from ..tt.build import kernel_site

__all__ = ["build_ht", "ht_params", "ht_tree"]

Node = tuple[int, ...]


def ht_tree(n_leaves: int) -> dict[Node, tuple[Node, Node]]:
    """Balanced dimension tree: inner node -> (first len // 2 leaves, the rest), root first."""
    tree: dict[Node, tuple[Node, Node]] = {}
    stack = [tuple(range(n_leaves))]
    while stack:
        node = stack.pop(0)
        if len(node) > 1:
            h = len(node) // 2
            tree[node] = (node[:h], node[h:])
            stack.extend(tree[node])
    return tree


def _name(node: Node, n_leaves: int) -> str:
    if len(node) == 1:
        return f"leaf{node[0]}"
    if n_leaves <= 10:
        return "t" + "".join(map(str, node))
    return f"t{node[0]}_{node[-1]}"


@dataclass(frozen=True)
class _Spec:
    leaves: tuple[tuple[str, dict[str, int], dict[str, str]], ...]  # (node, open legs, leg -> axis)
    tree: dict[Node, tuple[Node, Node]]
    ranks: dict[Node, int]  # every non-root node
    axes: tuple[str, ...]

    @property
    def root(self) -> Node:
        return tuple(range(len(self.leaves)))

    def name(self, node: Node) -> str:
        return _name(node, len(self.leaves))

    @property
    def num_params(self) -> int:
        total = sum(math.prod(legs.values()) * self.ranks[(k,)] for k, (_, legs, _) in enumerate(self.leaves))
        for node, (a, b) in self.tree.items():
            total += self.ranks[a] * self.ranks[b] * self.ranks.get(node, 1)
        return total

    def graph(self) -> TensorGraph:
        g = TensorGraph("ht")
        for k, (node, legs, _) in enumerate(self.leaves):
            g.add_node(node, legs=legs | {"r": self.ranks[(k,)]})
        for node in sorted(self.tree, key=lambda t: (len(t), t)):
            a, b = self.tree[node]
            legs = {"a": self.ranks[a], "b": self.ranks[b]}
            if node != self.root:
                legs["r"] = self.ranks[node]
            g.add_node(self.name(node), legs=legs)
            g.bond((self.name(a), "r"), (self.name(node), "a"))
            g.bond((self.name(b), "r"), (self.name(node), "b"))
        outputs: dict[str, list[str]] = {ax: [] for ax in self.axes}
        for node, legs, axis_of in self.leaves:
            for leg in legs:
                outputs[axis_of[leg]].append(f"{node}.{leg}")
        g.set_outputs(outputs)
        return g.freeze()


def _rank_dict(rank: Any, order: list[Node], names: list[str], root: Node, root_name: str) -> list[int]:
    if not isinstance(rank, Mapping):
        return ranks_list(rank, len(order), "ht")
    by_key = {}
    for key, r in rank.items():
        node = tuple(key) if isinstance(key, (tuple, list)) else key
        if node in (root, root_name):
            if r != 1:
                raise RankError(f"ht: the root {root_name!r} has rank 1 (no r leg), got {r!r}")
            continue
        if node in order:
            node = names[order.index(node)]
        if node not in names:
            raise RankError(f"ht: rank given for unknown tree node {key!r}; nodes: {names}")
        by_key[node] = r
    missing = [n for n in names if n not in by_key]
    if missing:
        raise RankError(f"ht: ranks dict misses nodes {missing}; give a rank for every non-root node: {names}")
    return ranks_list([by_key[n] for n in names], len(names), "ht")


def _spec(axes: Mapping[str, int], rank: Any, modes: Any, d: int | None, clip: bool, options: dict,
          kernel_with: int | None = None) -> _Spec:
    if options:
        raise TemplateError(f"ht: unknown options {sorted(options)}; valid: rank, modes, d, clip, kernel_with")
    out, inn, spatial = weight_axes(axes, "ht")
    m = resolve_modes(axes, modes, d, "ht")
    leaves = [(f"leaf{k}", {"o": o, "i": i}, {"o": out, "i": inn}) for k, (o, i) in enumerate(zip(m[out], m[inn]))]
    kernel, kernel_axes = {ax: axes[ax] for ax in spatial}, {ax: ax for ax in spatial}
    if kernel_with is not None:
        k = kernel_site(kernel_with, len(leaves), bool(spatial), "ht", "leaf")
        leaves[k] = (leaves[k][0], leaves[k][1] | kernel, leaves[k][2] | kernel_axes)
    elif spatial:
        leaves.append((f"leaf{len(leaves)}", kernel, kernel_axes))
    n = len(leaves)
    if n < 2:
        raise TemplateError(
            f"ht: a dimension tree needs at least 2 leaves, got {n} (modes {m[out]} x {m[inn]}); "
            "use more modes, e.g. d=2"
        )
    tree = ht_tree(n)
    root = tuple(range(n))
    order = [(k,) for k in range(n)] + sorted((t for t in tree if t != root), key=lambda t: (len(t), t))
    names = [_name(t, n) for t in order]
    ranks = _rank_dict(rank, order, names, root, _name(root, n))

    sizes = [math.prod(legs.values()) for _, legs, _ in leaves]
    total = math.prod(sizes)
    parent = {child: node for node, kids in tree.items() for child in kids}

    def bounds(rs: list[int]) -> list[list[Bound]]:
        r = dict(zip(order, rs))
        r[root] = 1
        out_b = []
        for node in order:
            inside = math.prod(sizes[k] for k in node)
            limits: list[Bound] = [
                (inside, "product of the modes in its subtree"),
                (total // inside, "product of the modes outside its subtree"),
            ]
            if node in tree:
                a, b = tree[node]
                limits.append((r[a] * r[b], f"product of the ranks of its children {_name(a, n)}, {_name(b, n)}"))
            p = parent[node]
            sib = tree[p][1] if tree[p][0] == node else tree[p][0]
            limits.append((r[sib] * r[p], f"rank of its sibling {_name(sib, n)} times that of its parent"))
            out_b.append(limits)
        return out_b

    def bond(node: Node) -> str:
        p = parent[node]
        return f"{_name(node, n)}.r -- {_name(p, n)}.{'a' if tree[p][0] == node else 'b'}"

    ranks = enforce_ranks([bond(t) for t in order], ranks, bounds, clip)
    return _Spec(tuple(leaves), tree, dict(zip(order, ranks)), tuple(axes))


def ht_params(
    axes: Mapping[str, int],
    *,
    rank: int | Mapping[Any, int],
    modes: Any = None,
    d: int | None = None,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> int:
    """Parameters of ``build_ht``: leaves n_k * r_k, transfers r_a * r_b * r_t, root r_a * r_b."""
    return _spec(axes, rank, modes, d, clip, options, kernel_with).num_params


def build_ht(
    axes: Mapping[str, int],
    *,
    rank: int | Mapping[Any, int],
    modes: Any = None,
    d: int | None = None,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> TensorGraph:
    """Hierarchical Tucker over a balanced tree of (out_k, in_k) leaves (+ a (kh, kw) leaf for conv).

    Args:
        axes: ``{"out": O, "in": I}`` or ``{"out": O, "in": C, "kh": kh, "kw": kw}``.
        rank: one rank for every non-root node, or a dict node -> rank (see the module doc).
        modes: ``(out_modes, in_modes)`` of equal length; balanced (``factorize``) when None.
        d: number of (out_k, in_k) leaves when ``modes`` is None (default: modes of about 8).
        clip: lower ranks larger than useful to the maximum instead of raising RankError.
        kernel_with: conv only: the (out_k, in_k) leaf that carries the kernel legs (no kernel leaf).
    """
    return _spec(axes, rank, modes, d, clip, options, kernel_with).graph()

"""Hierarchical Tucker by Grasedyck's hierarchical SVD (HSVD, SIAM J. Matrix Anal. Appl. 2010).

Dimension tree: the balanced binary tree over modes 0..d-1; a node is the tuple of its modes and
splits into left = its first len // 2 modes and right = the rest, e.g. (0,1,2) -> (0,), (1,2).
Every non-root node t gets a frame U_t: the top r_t left singular vectors of the matricization
T_(t) (modes of t as rows, all computed from the original tensor); an inner node stores the
transfer B_t = (U_left (x) U_right)^H U_t shaped (r_left, r_right, r_t); the root's r_t is 1.
The error is at most sqrt(2d - 3) times the best HT error at these ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from adtn.errors import AdtnError, RankError

from .svd import Method, check_method, check_rank, check_tensor, left_factor

Node = tuple[int, ...]


@dataclass
class HT:
    """A hierarchical Tucker tensor.

    leaves[k]: frame of mode k, (n_k, r_k). transfers[node]: (r_left, r_right, r_node) for each
    inner node, r_node = 1 at the root. tree[node]: (left child, right child) of each inner node.
    """

    leaves: list[Tensor]
    transfers: dict[Node, Tensor]
    tree: dict[Node, tuple[Node, Node]]
    shape: tuple[int, ...]
    ranks: dict[Node, int] = field(default_factory=dict)

    @property
    def root(self) -> Node:
        return tuple(range(len(self.shape)))


def ht_tree(d: int) -> dict[Node, tuple[Node, Node]]:
    """Balanced dimension tree over modes 0..d-1: inner node -> (first len//2 modes, the rest)."""
    if d < 2:
        raise AdtnError(f"ht_tree: a dimension tree needs at least 2 modes, got {d}")
    tree: dict[Node, tuple[Node, Node]] = {}
    stack = [tuple(range(d))]
    while stack:
        node = stack.pop()
        if len(node) > 1:
            h = len(node) // 2
            tree[node] = (node[:h], node[h:])
            stack.extend(tree[node])
    return tree


def _node_ranks(ranks: int | dict[Node, int], tree: dict[Node, tuple[Node, Node]], d: int) -> dict[Node, int | None]:
    """Rank cap per non-root node; nodes missing from a dict are kept at full rank."""
    nodes = [c for pair in tree.values() for c in pair]
    if isinstance(ranks, dict):
        unknown = [k for k in ranks if tuple(k) not in nodes]
        if unknown:
            raise RankError(
                f"ht_svd: ranks has nodes {unknown} that are not in the dimension tree; valid: {sorted(nodes)}"
            )
        return {n: (check_rank(ranks[n], "ht_svd", f"ranks[{n}]") if n in ranks else None) for n in nodes}
    r = check_rank(ranks, "ht_svd", "ranks")
    return {n: r for n in nodes}


def _matricize(t: Tensor, node: Node) -> Tensor:
    rest = [k for k in range(t.dim()) if k not in node]
    n_rows = math.prod(t.shape[k] for k in node)
    return t.permute(list(node) + rest).reshape(n_rows, -1)


def ht_svd(tensor: Tensor, ranks: int | dict[Node, int], method: Method = "auto") -> HT:
    """Hierarchical SVD of a dense tensor into HT format over the balanced dimension tree.

    Args:
        tensor: dense tensor with d >= 2 modes.
        ranks: an int (every non-root node) or a dict node -> rank (missing nodes: full rank).
            Each rank is clipped to what the node allows: min(prod n_t, prod of the other
            modes) and, for inner nodes, r_left * r_right.
        method: SVD method per matricization, as in tt_svd.
    """
    where = "ht_svd"
    out_dtype = tensor.dtype if isinstance(tensor, Tensor) else None
    t = check_tensor(tensor, where)
    check_method(method, where)
    d = t.dim()
    if d < 2:
        raise AdtnError(f"{where}: HT needs a tensor with at least 2 modes, got shape {tuple(t.shape)}")
    tree = ht_tree(d)
    caps = _node_ranks(ranks, tree, d)
    frames: dict[Node, Tensor] = {}
    # children before parents so an inner node can clip to r_left * r_right
    for node in sorted(caps, key=len):
        cap = caps[node]
        if node in tree:
            left, right = tree[node]
            kids = frames[left].shape[1] * frames[right].shape[1]
            cap = kids if cap is None else min(cap, kids)
        frames[node], _, _ = left_factor(_matricize(t, node), cap, None, method, need_rest=False)
    root = tuple(range(d))
    frames[root] = t.reshape(-1, 1)
    transfers: dict[Node, Tensor] = {}
    for node, (left, right) in tree.items():
        ul, ur, ut = frames[left], frames[right], frames[node]
        ut = ut.reshape(ul.shape[0], ur.shape[0], ut.shape[1])
        transfers[node] = torch.einsum("ia,jb,ijk->abk", ul.conj(), ur.conj(), ut).to(out_dtype)
    leaves = [frames[(k,)].to(out_dtype) for k in range(d)]
    node_ranks = {n: f.shape[1] for n, f in frames.items()}
    return HT(leaves=leaves, transfers=transfers, tree=tree, shape=tuple(t.shape), ranks=node_ranks)


def ht_to_tensor(ht: HT) -> Tensor:
    """Dense tensor from an HT: frames are built bottom-up, U_t = (U_l (x) U_r) B_t."""
    d = len(ht.shape)
    if len(ht.leaves) != d:
        raise AdtnError(f"ht_to_tensor: need one leaf per mode ({d}), got {len(ht.leaves)}")

    def frame(node: Node) -> Tensor:
        if len(node) == 1:
            return ht.leaves[node[0]]
        left, right = ht.tree[node]
        ul, ur, b = frame(left), frame(right), ht.transfers[node]
        if b.shape[:2] != (ul.shape[1], ur.shape[1]):
            raise RankError(
                f"ht_to_tensor: transfer {node} must be (r_left, r_right, r) = "
                f"({ul.shape[1]}, {ur.shape[1]}, r), got {tuple(b.shape)}"
            )
        return torch.einsum("ia,jb,abk->ijk", ul, ur, b).reshape(-1, b.shape[2])

    return frame(ht.root).reshape(ht.shape)

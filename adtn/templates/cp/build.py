"""CP (CANDECOMP/PARAFAC) as a graph: one factor (n_k, R) per axis, all sharing one rank index.

A rank-R CP, W[i_1..i_d] = sum_r U_1[i_1, r] ... U_d[i_d, r], needs an index shared by all d
factors: a hyperedge. It is spelled as one fixed node with the symbolic value ``"delta"``
(the copy tensor, 1 where all indices agree), with one leg ``u_<axis>`` per factor:

- d = 2 (a linear weight): no copy tensor at all; ``u_out.r -- u_in.r`` is the shared index.
- d >= 3: ``delta`` with d legs of size R. The planner never materialises it: all its legs
  become one einsum index shared by the d factors, so the contraction is exactly CP's and
  costs nothing to store (a stored R^d superdiagonal would be 16.8M entries for a conv
  kernel at R = 64).

Fixed nodes are not parameters, so the count stays R * sum_k n_k (conv: R (in + kh + kw + out),
Liang and Lee, IPDPSW 2021). Factor ``u_<axis>`` has legs ``(i: n_k, r: R)``, the (n_k, R) layout of
tensorly and ``adtn.decompose.cp_als``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ...errors import TemplateError
from ...graph import TensorGraph
from ..factor import check_rank
from ..tucker.build import check_axes, positive_int

__all__ = ["cp", "cp_max_rank", "cp_params", "delta"]


def cp_max_rank(sizes: Mapping[str, int]) -> int:
    """The largest useful CP rank: every tensor has rank <= prod(sizes) / max(sizes)."""
    return math.prod(sizes.values()) // max(sizes.values())


def _cp_spec(axes: Mapping[str, int], rank: int) -> tuple[dict[str, int], int]:
    sizes = check_axes(axes, "cp")
    if len(sizes) < 2:
        raise TemplateError(f"cp: needs at least two axes to join, got {list(sizes)}")
    rank = positive_int(rank, "cp: rank")
    shared = " = ".join(f"u_{ax}.r" for ax in sizes)
    check_rank(shared, rank, cp_max_rank(sizes), f"every tensor of shape {tuple(sizes.values())} has CP rank "
               "<= prod(sizes) / max(sizes)")
    return sizes, rank


def cp_params(axes: Mapping[str, int], *, rank: int) -> int:
    """Closed-form parameter count: R * sum_k n_k (the copy tensors are fixed, not parameters)."""
    sizes, rank = _cp_spec(axes, rank)
    return rank * sum(sizes.values())


def delta(rank: int, legs: int = 3) -> torch.Tensor:
    """The copy tensor: ``legs`` legs of size ``rank``, 1 where all indices agree, else 0."""
    out = torch.zeros((rank,) * legs, dtype=torch.float64)
    idx = torch.arange(rank)
    out[(idx,) * legs] = 1.0
    return out


def cp(axes: Mapping[str, int], *, rank: int) -> TensorGraph:
    """CP of rank R: factors ``u_<axis>`` (n_k, R) joined by a chain of fixed 3-leg copy tensors.

    Args:
        axes: the weight's axes, name -> size (at least two).
        rank: R, at most prod(sizes) / max(sizes).

    Returns:
        A frozen graph with R * sum(sizes) parameters.
    """
    sizes, rank = _cp_spec(axes, rank)
    names = list(sizes)
    g = TensorGraph("cp")
    for ax, n in sizes.items():
        g.add_node(f"u_{ax}", {"i": n, "r": rank})
    if len(names) == 2:
        g.bond(f"u_{names[0]}.r", f"u_{names[1]}.r")
    else:
        g.add_node("delta", {f"u_{ax}": rank for ax in names}, role="fixed", value="delta")
        for ax in names:
            g.bond(f"u_{ax}.r", f"delta.u_{ax}")
    return g.set_outputs({ax: [f"u_{ax}.i"] for ax in names}).freeze()

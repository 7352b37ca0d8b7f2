"""Initialisers of the chain templates ``tt``, ``tr``, ``semi_tt``, ``semi_tr``.

Every chain is a TT (or TR) of the weight regrouped by core: each core's open legs, in its leg
order, are one mode, the cores in chain order. So one routine serves all four:

- ``tt``: TT-SVD of that tensor (Oseledets). For a linear weight the modes are the pairs
  (o_k, i_k), i.e. TT-matrix SVD; for a conv weight the spatial core comes first, so the
  first mode is kh * kw (Garipov et al.).
- ``tr``: TR-SVD (Zhao et al.), optionally ALS sweeps (``n_als``) at a fixed rank.
- ``semi_tt`` / ``semi_tr``: the semi-tensor product only moves legs (core k+1's ``s`` leg is
  part of core k's in-mode), so the regrouped weight's TT / TR is the exact closed form at the
  stored ranks; the nominal rank of a semi-tensor bond is t times the stored one.

Ranks: as the build takes them (an int or one per bond), or a dict keyed by bond name
(``"core0.r -- core1.l"``) or bond index. ``tol``: TT-SVD discards tol / sqrt(d - 1) of the
norm per bond; TR-SVD gives the first split (the product r_0 r_1, split as evenly as possible)
sqrt(2 / d) of tol and TT-SVD of the rest the remaining sqrt((d - 2) / d), so the total
relative error is at most tol in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..decompose import tr_svd, tt_svd
from ..decompose.svd import left_factor, rank_for_delta
from ..errors import AdtnError, RankError
from ..graph import TensorGraph
from .init_common import initialise, open_legs, regroup

__all__ = ["init_semi_tr", "init_semi_tt", "init_tr", "init_tt", "tr_svd_tol"]


def _chain(graph: TensorGraph) -> tuple[list[str], bool]:
    """The cores in chain order and whether the chain closes into a ring."""
    nodes = graph.nodes_with_role("param")
    return nodes, "l" in graph.legs(nodes[0])


def _bond_names(graph: TensorGraph) -> list[str]:
    nodes, ring = _chain(graph)
    n = len(nodes)
    return [f"{nodes[k]}.r -- {nodes[(k + 1) % n]}.l" for k in range(n if ring else n - 1)]


def _rank_list(rank: Mapping[Any, int], probe: TensorGraph) -> list[int]:
    """A dict bond name (or index) -> rank as the list the build takes."""
    names = _bond_names(probe)
    by_name = {}
    for key, r in rank.items():
        name = names[key] if isinstance(key, int) and 0 <= key < len(names) else key
        if name not in names:
            raise RankError(f"rank given for unknown bond {key!r}; bonds: {names}")
        by_name[name] = r
    missing = [n for n in names if n not in by_name]
    if missing:
        raise RankError(f"ranks dict misses bonds {missing}; give one rank per bond: {names}")
    return [by_name[n] for n in names]


def tr_svd_tol(tensor: Tensor, tol: float) -> list[Tensor]:
    """TR-SVD with a relative error target: ring cores (r_{k-1}, n_k, r_k), r_d == r_0.

    The first unfolding keeps the fewest singular vectors r01 whose tail is <= sqrt(2 / d) tol
    ||T||; r01 becomes r_0 r_1 with r_0 = floor(sqrt(r01)) (a few more vectors when r01 is not
    a product of near-equal factors). The rest, (r_1 n_2, n_3, ..., n_d r_0), is TT-SVD'd to
    sqrt((d - 2) / d) tol ||T||. The first factor is orthonormal, so the squared errors add.
    """
    shape = tuple(tensor.shape)
    d = len(shape)
    norm = float(torch.linalg.vector_norm(tensor))
    n1, rest_size = shape[0], tensor.numel() // shape[0]
    u, rest, s = left_factor(tensor.reshape(n1, -1), None, None, "svd")
    r01 = rank_for_delta(s, tol * norm * math.sqrt(2 / d))
    r0 = max(1, math.isqrt(r01))
    r1 = -(-r01 // r0)
    if r0 * r1 > u.shape[1]:
        r0 = max(f for f in range(1, math.isqrt(r01) + 1) if r01 % f == 0)
        r1 = r01 // r0
    u, rest = u[:, : r0 * r1], rest[: r0 * r1]
    first = u.reshape(n1, r0, r1).permute(1, 0, 2)
    modes = list(shape[1:])
    modes[0] *= r1
    modes[-1] *= r0
    rest = rest.reshape(r0, r1, rest_size).permute(1, 2, 0).reshape(modes)
    left = tol * norm * math.sqrt((d - 2) / d)
    rest_norm = float(torch.linalg.vector_norm(rest))
    rest_tol = None if d == 2 else left / rest_norm if rest_norm else 1.0  # d == 2: nothing left to cut
    cores = tt_svd(rest, tol=rest_tol)
    cores[0] = cores[0].reshape(r1, -1, cores[0].shape[-1])
    cores[-1] = cores[-1].reshape(cores[-1].shape[0], -1, r0)
    return [first.contiguous()] + cores


def _decompose(dense: Tensor, graph: TensorGraph, tol: float | None, n_als: int = 0) -> dict[str, Tensor]:
    """The chain's cores from the weight, at the graph's bond sizes (tol None) or at ``tol``."""
    nodes, ring = _chain(graph)
    groups = [open_legs(graph, n) for n in nodes]
    for node, group in zip(nodes, groups):
        legs = list(graph.legs(node))
        inner = [leg.name for leg in group]
        if legs != ["l"] * ("l" in legs) + inner + ["r"] * ("r" in legs):
            raise AdtnError(f"chain init: node {node!r} has legs {legs}; expected (l, open legs..., r)")
    t = regroup(dense, graph, groups)
    if ring:
        right = [graph.legs(n)["r"] for n in nodes]
        cores = tr_svd(t, [right[-1]] + right[:-1], n_als=n_als) if tol is None else tr_svd_tol(t, tol)
    else:
        ranks = [graph.legs(n)["r"] for n in nodes[:-1]] if tol is None else None
        cores = tt_svd(t, ranks, tol)
    out = {}
    for node, group, core in zip(nodes, groups, cores):
        legs = graph.legs(node)
        c = core.reshape([core.shape[0]] + [graph.leg_size(leg) for leg in group] + [core.shape[-1]])
        if "l" not in legs:
            c = c[0]
        if "r" not in legs:
            c = c[..., 0]
        out[node] = c
    return out


def _spec(graph: TensorGraph, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
    """Nominal rank per bond from the cores' shapes: a semi-tensor bond (its right core has an
    ``s`` leg of size t) stores rank / t."""
    nodes, ring = _chain(graph)
    n = len(nodes)
    return [shapes[nodes[k]][-1] * graph.legs(nodes[(k + 1) % n]).get("s", 1) for k in range(n if ring else n - 1)]


def _init(name: str, dense: Any, axes: Mapping[str, int], rank: Any, tol: Any, options: dict, n_als: int = 0):
    return initialise(name, dense, axes, rank, tol, options, partial(_decompose, n_als=n_als), _spec,
                      rank_spec=_rank_list)


def init_tt(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, **options: Any
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """TT-SVD of a weight into ``tt``'s graph: (graph, {core: tensor}).

    Args:
        dense: the weight, shaped like ``axes`` ((out, in) or (out, in, kh, kw)).
        axes: as for ``build_tt``.
        rank: as for ``build_tt`` (int or one per bond), or a dict bond name -> rank.
        tol: instead of rank, the relative Frobenius error to reach, in (0, 1).
        **options: ``build_tt``'s other options (modes, d, clip).
    """
    return _init("tt", dense, axes, rank, tol, options)


def init_tr(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, n_als: int = 0,
    **options: Any,
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """TR-SVD of a weight into ``tr``'s graph (ranks, tol and options as ``init_tt``).

    ``n_als`` ALS sweeps follow the SVD at a fixed rank (each never increases the error). Where
    TR-SVD cannot use a bond fully (r_0 r_1 above the first mode), the core is zero-padded.
    """
    return _init("tr", dense, axes, rank, tol, options, n_als)


def init_semi_tt(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, **options: Any
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """Closed-form STT: TT-SVD of the weight regrouped by ``semi_tt``'s cores (options: modes, d, t, clip).

    Ranks are nominal (t times the stored size on semi-tensor bonds), as the build takes them.
    """
    return _init("semi_tt", dense, axes, rank, tol, options)


def init_semi_tr(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, n_als: int = 0,
    **options: Any,
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """Closed-form STR: TR-SVD of the weight regrouped by ``semi_tr``'s cores (see ``init_semi_tt``)."""
    return _init("semi_tr", dense, axes, rank, tol, options, n_als)

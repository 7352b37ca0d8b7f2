"""Initialiser of ``cp``: a two-axis weight is a matrix, whose best rank-R CP is its truncated
SVD (so ``tol`` is exact there). Three axes or more: CP-ALS with an SVD start
(``adtn.decompose.cp_als``, which warns on degeneracy). ``tol``: R doubles from 1 until ALS
reaches it, then bisection finds the smallest R that does (ALS errors are not exactly monotone
in R, so this is the smallest found, not a proof); past the largest useful R (prod / max of the
sizes) it raises RankError. Each term's weight w_r is split evenly over its factors (w_r^(1/d)
on each), which keeps the factors at one scale for fine-tuning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ...decompose import cp_als, cp_to_tensor, truncated_svd
from ...decompose.svd import rank_for_tol
from ...errors import RankError
from ...graph import TensorGraph
from ..init_common import check_size, check_weight, rel_error
from ..registry import get

__all__ = ["init_cp"]


# ---------------------------------------------------------------------- CP
def _balanced(weights: Tensor, factors: list[Tensor]) -> list[Tensor]:
    """Spread the (non-negative) term weights evenly over the factors; a zero term stays zero in
    the first factor only, so gradient descent can still grow it."""
    share = weights.pow(1.0 / len(factors))
    rest = torch.where(weights > 0, share, torch.ones_like(share))
    return [factors[0] * share] + [f * rest for f in factors[1:]]


def _cp(dense: Tensor, rank: int, n_iter: int, seed: int, error: bool = True) -> tuple[list[Tensor], float, list]:
    """(factors with the scale spread, relative error (nan unless ``error``), warnings cp_als raised)."""
    if dense.dim() == 2:
        u, s, vh = truncated_svd(dense, rank)
        factors = _balanced(s, [u, vh.mT])
        if u.shape[1] < rank:  # rank above min(out, in): the extra terms are zero
            factors = [torch.cat([f, f.new_zeros(f.shape[0], rank - f.shape[1])], 1) for f in factors]
        caught: list = []
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            weights, factors = cp_als(dense, rank, n_iter=n_iter, seed=seed)
        factors = _balanced(weights, factors)
    if not error:
        return factors, math.nan, list(caught)
    approx = cp_to_tensor(torch.ones(rank, dtype=dense.dtype, device=dense.device), factors)
    return factors, rel_error(approx, dense), list(caught)


def _cp_search(dense: Tensor, tol: float, cap: int, n_iter: int, seed: int) -> tuple[int, list[Tensor], list]:
    """The smallest rank found whose CP-ALS fit reaches ``tol``: doubling, then bisection."""
    if dense.dim() == 2:  # the truncated SVD: exact rank from the singular values
        rank = rank_for_tol(torch.linalg.svdvals(dense), tol)
        factors, _, caught = _cp(dense, rank, n_iter, seed, error=False)
        return rank, factors, caught
    fits: dict[int, tuple[list[Tensor], float, list]] = {}
    low, rank = 0, 1
    while True:
        fits[rank] = _cp(dense, rank, n_iter, seed)
        if fits[rank][1] <= tol:
            break
        if rank >= cap:
            raise RankError(
                f"cp init: tol={tol} not reached: CP-ALS at rank {cap}, the largest useful, gives error "
                f"{fits[rank][1]:.3g}; give rank= or a larger tol"
            )
        low, rank = rank, min(2 * rank, cap)
    while rank - low > 1:
        mid = (low + rank) // 2
        fits[mid] = _cp(dense, mid, n_iter, seed)
        low, rank = (low, mid) if fits[mid][1] <= tol else (mid, rank)
    return rank, fits[rank][0], fits[rank][2]


def init_cp(
    dense: Tensor, axes: Mapping[str, int], *, rank: int | None = None, tol: float | None = None, n_iter: int = 100,
    seed: int = 0, **options: Any,
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """CP of a weight into ``cp``'s graph: (graph, {u_<axis>: (n_k, R)}).

    Args:
        dense: the weight, shaped like ``axes``.
        axes: the weight's axes.
        rank: R.
        tol: instead of rank, the relative Frobenius error to reach, in (0, 1) (see the module doc).
        n_iter: CP-ALS sweeps at most (three axes or more).
        seed: seed of CP-ALS's random start columns (ranks above a mode's size).
    """
    where = "cp init"
    dense = check_weight(dense, axes, where)
    tol = check_size(rank, tol, where)
    build = get("cp").build
    caught: list = []
    if tol is None:
        graph = build(axes, rank=rank, **options)
        factors, _, caught = _cp(dense, graph.legs(graph.nodes[0])["r"], n_iter, seed, error=False)
    else:
        cap = math.prod(dense.shape) // max(dense.shape)
        rank, factors, caught = _cp_search(dense, tol, cap, n_iter, seed)
        graph = build(axes, rank=rank, **options)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    return graph, {f"u_{ax}": f for ax, f in zip(axes, factors)}

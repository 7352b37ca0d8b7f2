"""Initialiser of ``kronecker`` (GKPD): the Van Loan-Pitsianis rearrangement and a truncated
SVD (``adtn.decompose.kronecker_svd``), optimal in Frobenius norm; ``tol`` picks R from the
rearranged matrix's singular values. Each term's s_r is split as sqrt(s_r) on A_r and on B_r,
which keeps the two factors at one scale for fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ...decompose import kronecker_svd
from ...decompose.svd import rank_for_tol
from ...graph import TensorGraph
from ..init_common import initialise

__all__ = ["init_kronecker"]


# ---------------------------------------------------------------------- Kronecker
def _kron_decompose(dense: Tensor, graph: TensorGraph, tol: float | None) -> dict[str, Tensor]:
    a_legs = {leg: n for leg, n in graph.legs("a").items() if leg != "r"}
    b_legs = {leg: n for leg, n in graph.legs("b").items() if leg != "r"}
    full = min(math.prod(a_legs.values()), math.prod(b_legs.values()))
    a, b = kronecker_svd(dense, list(a_legs.values()), list(b_legs.values()), full if tol else graph.legs("a")["r"])
    s = torch.linalg.vector_norm(a.reshape(a.shape[0], -1), dim=1)  # A_r = s_r u_r, B_r = v_r
    if tol is not None:
        r = rank_for_tol(s, tol)
        a, b, s = a[:r], b[:r], s[:r]
    root = torch.where(s > 0, s.sqrt(), torch.ones_like(s))  # a zero term keeps B_r = v_r: trainable
    shape = (-1,) + (1,) * (a.dim() - 1)
    return {"a": a / root.reshape(shape), "b": b * root.reshape(shape)}


def init_kronecker(
    dense: Tensor, axes: Mapping[str, int], *, rank: int | None = None, tol: float | None = None, **options: Any
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """Best sum of R Kronecker products (Van Loan-Pitsianis) into ``kronecker``'s graph: (graph, {a, b}).

    Args:
        dense: the weight, shaped like ``axes``.
        axes: the weight's axes.
        rank: R, the number of terms.
        tol: instead of rank, the relative Frobenius error to reach, in (0, 1).
        **options: ``kronecker``'s other options (factors).
    """
    return initialise("kronecker", dense, axes, rank, tol, options, _kron_decompose, lambda g, shapes: shapes["a"][0])

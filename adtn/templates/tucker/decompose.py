"""Initialisers of ``tucker``, ``tucker2`` and ``semi_tucker``: HOSVD, optionally HOOI sweeps.

The weight is split into the graph's output legs; each factor node ``u_<k>`` owns one of them
(its ``i`` leg) and HOSVD runs over those modes (``adtn.decompose.hosvd``), the other legs
staying whole in the core. For Tucker that is plain (partial) Tucker; for Tucker-2 the channel
modes only. For semi-tensor Tucker it is the exact closed form: (U_k (x) I_t) acting on mode k
is U_k acting on the slow part (I_k / t) of the axis, the fast part t being carried through to
the core's ``t_<k>`` leg, so STTu of the weight is partial Tucker of the weight with each axis
split as (I_k / t, t), at ranks R_k / t.

``tol``: HOSVD's error satisfies ||T - T_hat||^2 <= sum over the N decomposed modes of the
discarded squared singular values of that unfolding (De Lathauwer et al. 2000), so each mode
keeps the fewest singular vectors whose tail is at most tol ||T|| / sqrt(N). HOOI sweeps
(``n_iter``) never increase the error. Ranks the unfolding cannot carry (more than the product
of the other modes) are zero-padded on the rank path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ...decompose import hosvd
from ...decompose.svd import rank_for_delta
from ...graph import TensorGraph
from ..init_common import initialise

__all__ = ["init_semi_tucker", "init_tucker", "init_tucker2"]


def _decompose(dense: Tensor, graph: TensorGraph, tol: float | None, n_iter: int = 0) -> dict[str, Tensor]:
    legs = [leg for ax_legs in graph.outputs.values() for leg in ax_legs]
    t = dense.reshape([graph.leg_size(leg) for leg in legs])
    modes = [k for k, leg in enumerate(legs) if leg.node != "core"]
    factors_of = [legs[k].node for k in modes]
    if tol is None:
        ranks = [graph.legs(n)["r"] for n in factors_of]
    else:
        delta = tol * float(torch.linalg.vector_norm(t)) / math.sqrt(len(modes))
        ranks = [rank_for_delta(torch.linalg.svdvals(t.movedim(k, 0).reshape(t.shape[k], -1)), delta) for k in modes]
    core, factors = hosvd(t, ranks, modes=modes, n_iter=n_iter)
    # the core's dims follow the legs, a factor's leg replaced by its rank: name them, then reorder
    names = [leg.name if leg.node == "core" else graph.partner((leg.node, "r")).name for leg in legs]
    out = {"core": core.permute([names.index(leg) for leg in graph.legs("core")])}
    out.update(zip(factors_of, factors))
    return out


def _spec(graph: TensorGraph, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Rank per compressed axis: the factor's rank times the axis's other legs (t for STTu)."""
    spec = {}
    for axis, legs in graph.outputs.items():
        factor = [leg.node for leg in legs if leg.node != "core"]
        if factor:
            spec[axis] = shapes[factor[0]][1] * graph.axis_sizes[axis] // graph.leg_size((factor[0], "i"))
    return spec


def _init(name: str, dense: Any, axes: Mapping[str, int], rank: Any, tol: Any, n_iter: int, options: dict,
          probe_rank: Any = 1):
    return initialise(name, dense, axes, rank, tol, options, partial(_decompose, n_iter=n_iter), _spec,
                      probe_rank=probe_rank)


def init_tucker(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, n_iter: int = 0,
    **options: Any,
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """HOSVD (+ ``n_iter`` HOOI sweeps) of a weight into ``tucker``'s graph: (graph, {core, u_<axis>}).

    Args:
        dense: the weight, shaped like ``axes``.
        axes: the weight's axes.
        rank: as for ``tucker`` (int, one per compressed axis, or a dict axis -> rank).
        tol: instead of rank, the relative Frobenius error to reach, in (0, 1).
        n_iter: HOOI sweeps after HOSVD.
        **options: ``tucker``'s other options (compress).
    """
    return _init("tucker", dense, axes, rank, tol, n_iter, options)


def init_tucker2(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, n_iter: int = 0,
    **options: Any,
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """HOSVD of the channel modes (+ ``n_iter`` HOOI sweeps) into ``tucker2``'s graph (see ``init_tucker``)."""
    return _init("tucker2", dense, axes, rank, tol, n_iter, options)


def init_semi_tucker(
    dense: Tensor, axes: Mapping[str, int], *, rank: Any = None, tol: float | None = None, n_iter: int = 0,
    **options: Any,
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """Closed-form STTu: HOSVD of the weight with each axis split as (I_k / t, t) (see the module doc).

    Ranks are the nominal R_k (t times the stored factor's), as ``semi_tucker`` takes them;
    options: t, compress.
    """
    return _init("semi_tucker", dense, axes, rank, tol, n_iter, options, probe_rank=options.get("t", 2))

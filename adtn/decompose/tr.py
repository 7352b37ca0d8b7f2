"""Tensor-ring decomposition: TR-SVD (Zhao et al. 2016) with optional ALS sweeps.

Core k is (r_{k-1}, n_k, r_k) and the ring closes with r_d = r_0:
T[i_1, ..., i_d] = trace(G_1[:, i_1, :] @ ... @ G_d[:, i_d, :]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from adtn.errors import AdtnError, RankError

from .svd import Method, check_method, check_rank, check_tensor, left_factor
from .tt import chain, check_cores


def _ring_ranks(ranks: int | Sequence[int], d: int, where: str) -> list[int]:
    """Ranks r_0 .. r_{d-1} from an int, d values, or d+1 values with r_d == r_0."""
    if isinstance(ranks, Sequence) and not isinstance(ranks, str):
        ranks = [check_rank(r, where, f"ranks[{i}]") for i, r in enumerate(ranks)]
        if len(ranks) == d + 1:
            if ranks[0] != ranks[-1]:
                raise RankError(f"{where}: a ring needs r_d == r_0, got r_0 = {ranks[0]} and r_d = {ranks[-1]}")
            ranks = ranks[:-1]
        if len(ranks) != d:
            raise RankError(f"{where}: ranks must have {d} (r_0..r_{{d-1}}) or {d + 1} entries, got {len(ranks)}")
        return ranks
    return [check_rank(ranks, where, "ranks")] * d


def tr_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """Dense tensor from ring cores (r_{k-1}, n_k, r_k), r_d == r_0: trace of the core product."""
    check_cores(cores, "tr_to_tensor", ring=True)
    full = chain(cores)  # (r_0, N, r_0)
    return torch.einsum("aia->i", full).reshape(tuple(c.shape[1] for c in cores))


def _als_sweep(t: Tensor, cores: list[Tensor]) -> None:
    """One ALS sweep: each core in turn is the least-squares fit with the others fixed."""
    d = len(cores)
    for k in range(d):
        order = list(range(k + 1, d)) + list(range(k))
        z = chain([cores[j] for j in order])  # (r_k, J, r_{k-1}) in core k's (left, right) = (r_{k-1}, r_k)
        r_l, n_k, r_r = cores[k].shape
        zmat = z.permute(2, 0, 1).reshape(r_l * r_r, -1)  # rows (a, b): G_k[a, i, b]
        tk = t.permute([k] + order).reshape(n_k, -1)
        sol = torch.linalg.lstsq(zmat.mT, tk.mT).solution  # (r_l r_r, n_k)
        cores[k] = sol.reshape(r_l, r_r, n_k).permute(0, 2, 1).contiguous()


def tr_svd(
    tensor: Tensor,
    ranks: int | Sequence[int],
    n_als: int = 0,
    method: Method = "auto",
) -> list[Tensor]:
    """TR-SVD: the first unfolding's truncated SVD at rank r_0 * r_1 splits off the ring bond,
    then TT-SVD runs on the rest with r_0 carried along to the last core.

    Args:
        tensor: dense tensor with d >= 1 modes.
        ranks: an int (uniform), d values r_0..r_{d-1}, or d+1 values with r_d == r_0.
            Ranks above what an unfolding allows are clipped. r_0 * r_1 must fit in
            min(n_1, n_2 ... n_d); if it does not, r_0 is lowered to at most floor(sqrt of that
            bound) and r_1 to fill it (so a uniform rank r on a small first mode gives a thinner
            ring; put a large mode first to avoid it). Full ranks reproduce the tensor exactly.
        n_als: alternating-least-squares sweeps after the SVD; each never increases the error.
        method: SVD method per unfolding, as in tt_svd.

    Returns:
        d cores of shape (r_{k-1}, n_k, r_k) with r_d == r_0.
    """
    where = "tr_svd"
    out_dtype = tensor.dtype if isinstance(tensor, Tensor) else None
    t = check_tensor(tensor, where)
    check_method(method, where)
    if isinstance(n_als, bool) or not isinstance(n_als, int) or n_als < 0:
        raise AdtnError(f"{where}: n_als must be an integer >= 0, got {n_als!r}")
    shape = tuple(t.shape)
    d = len(shape)
    if d == 0:
        raise AdtnError(f"{where}: tensor must have at least 1 mode, got a 0-d tensor")
    rk = _ring_ranks(ranks, d, where)
    if d == 1:
        return [t.reshape(1, shape[0], 1).to(out_dtype)]
    n1, rest_size = shape[0], math.prod(shape[1:])
    cap = min(n1, rest_size)
    r0, r1 = rk[0], rk[1]
    if r0 * r1 > cap:
        r0 = min(r0, max(1, math.isqrt(cap)))
        r1 = min(r1, cap // r0)
    u, rest, _ = left_factor(t.reshape(n1, -1), r0 * r1, None, method)
    cores = [u.reshape(n1, r0, r1).permute(1, 0, 2).contiguous()]
    # rest rows are (r0, r1); move r0 to the end so it closes the ring on the last core
    rest = rest.reshape(r0, r1, rest_size).permute(1, 2, 0).contiguous()
    r_prev = r1
    for k in range(1, d - 1):
        mat = rest.reshape(r_prev * shape[k], -1)
        u, rest, _ = left_factor(mat, rk[k + 1], None, method)
        r = u.shape[1]
        cores.append(u.reshape(r_prev, shape[k], r))
        r_prev = r
    cores.append(rest.reshape(r_prev, shape[-1], r0))
    for _ in range(n_als):
        _als_sweep(t, cores)
    return [c.to(out_dtype) for c in cores]

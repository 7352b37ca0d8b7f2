"""Tensor-train (TT-SVD, Oseledets 2011) and TT-matrix (Novikov et al. 2015) decompositions.

Core layouts: TT core k is (r_{k-1}, n_k, r_k) with r_0 = r_d = 1; TT-matrix core k is
(r_{k-1}, out_k, in_k, r_k). Cores 0..d-2 come out left-orthonormal (core.reshape(-1, r_k) has
orthonormal columns) and the last core carries the norm. Where a rank cap keeps every row of an
unfolding (r_{k-1} n_k <= cap), that core is the identity rather than singular vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from adtn.errors import AdtnError, RankError

from .svd import Method, check_method, check_tensor, check_tol, left_factor, normalize_ranks


def tt_svd(
    tensor: Tensor,
    ranks: int | Sequence[int] | None = None,
    tol: float | None = None,
    method: Method = "auto",
) -> list[Tensor]:
    """TT-SVD: sequential truncated SVDs of the unfoldings, left to right.

    Args:
        tensor: dense tensor with d >= 1 modes.
        ranks: cap on the d-1 inner ranks: an int (uniform), d-1 values, or d+1 values with
            r_0 = r_d = 1 (tensorly's convention). Caps above what the unfolding allows are
            clipped to min(r_{k-1} n_k, n_{k+1} ... n_d). None: no cap.
        tol: relative Frobenius error target. Each of the d-1 steps may discard
            tol / sqrt(d-1) * ||tensor|| (Oseledets), so the total error is <= tol * ||tensor||.
            With ``ranks`` too, each rank is the smaller of the two.
        method: "svd" (LAPACK SVD per unfolding), "gram" (eigh of the smaller Gram matrix), or
            "auto" (Gram where its round-off cannot matter, SVD otherwise).

    Returns:
        d cores of shape (r_{k-1}, n_k, r_k), r_0 = r_d = 1.
    """
    where = "tt_svd"
    out_dtype = tensor.dtype if isinstance(tensor, Tensor) else None
    t = check_tensor(tensor, where)
    tol = check_tol(tol, where)
    check_method(method, where)
    shape = tuple(t.shape)
    d = len(shape)
    if d == 0:
        raise AdtnError(f"{where}: tensor must have at least 1 mode, got a 0-d tensor")
    caps = normalize_ranks(ranks, d - 1, where)
    delta = None
    if tol is not None and d > 1:
        delta = tol / math.sqrt(d - 1) * float(torch.linalg.vector_norm(t))
    cores: list[Tensor] = []
    rest = t.reshape(1, -1)
    r_prev = 1
    for k in range(d - 1):
        mat = rest.reshape(r_prev * shape[k], -1)
        if delta is None and mat.shape[0] <= min(mat.shape[1], caps[k] or mat.shape[0]):
            # every row is kept: U = I is an exact, orthonormal factor and costs nothing
            u, rest = torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device), mat
        else:
            u, rest, _ = left_factor(mat, caps[k], delta, method)
        r = u.shape[1]
        cores.append(u.reshape(r_prev, shape[k], r))
        r_prev = r
    cores.append(rest.reshape(r_prev, shape[-1], 1))
    return [c.to(out_dtype) for c in cores]


def check_cores(cores: Sequence[Tensor], where: str, ndim: int = 3, ring: bool = False) -> None:
    """Each core is (r_left, ..., r_right) and neighbouring bond sizes match (and wrap for a ring)."""
    if len(cores) == 0:
        raise AdtnError(f"{where}: cores must be a non-empty list, got 0 cores")
    for k, c in enumerate(cores):
        if not isinstance(c, Tensor) or c.dim() != ndim:
            got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise AdtnError(f"{where}: core {k} must be a {ndim}-d tensor (r_left, ..., r_right), got {got}")
    for k in range(len(cores) if ring else len(cores) - 1):
        a, b = cores[k], cores[(k + 1) % len(cores)]
        if a.shape[-1] != b.shape[0]:
            raise RankError(
                f"{where}: bond core{k}.r -- core{(k + 1) % len(cores)}.l: sizes must match, "
                f"got {a.shape[-1]} and {b.shape[0]}"
            )


def chain(cores: Sequence[Tensor]) -> Tensor:
    """Contract cores (r_0, n_1, r_1), ..., (r_{d-1}, n_d, r_d) into (r_0, n_1 ... n_d, r_d)."""
    r0 = cores[0].shape[0]
    res = cores[0].reshape(-1, cores[0].shape[-1])
    for c in cores[1:]:
        res = (res @ c.reshape(c.shape[0], -1)).reshape(-1, c.shape[-1])
    return res.reshape(r0, -1, cores[-1].shape[-1])


def tt_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """Dense tensor (n_1, ..., n_d) from TT cores (r_{k-1}, n_k, r_k) with r_0 = r_d = 1."""
    where = "tt_to_tensor"
    check_cores(cores, where)
    if cores[0].shape[0] != 1 or cores[-1].shape[-1] != 1:
        raise RankError(
            f"{where}: boundary ranks must be 1 (use tr_to_tensor for a ring), "
            f"got r_0 = {cores[0].shape[0]} and r_d = {cores[-1].shape[-1]}"
        )
    return chain(cores).reshape(tuple(c.shape[1] for c in cores))


def _check_modes(matrix: Tensor, out_modes: Sequence[int], in_modes: Sequence[int], where: str) -> None:
    if matrix.dim() != 2:
        raise AdtnError(f"{where}: matrix must be 2-D, got shape {tuple(matrix.shape)}")
    if len(out_modes) != len(in_modes) or len(out_modes) == 0:
        raise AdtnError(
            f"{where}: out_modes and in_modes must have the same non-zero length, "
            f"got {len(out_modes)} and {len(in_modes)}"
        )
    for name, modes, size in (("out_modes", out_modes, matrix.shape[0]), ("in_modes", in_modes, matrix.shape[1])):
        if any(int(m) < 1 for m in modes):
            raise AdtnError(f"{where}: {name} must be positive, got {tuple(modes)}")
        if math.prod(modes) != size:
            axis = "rows" if name == "out_modes" else "columns"
            raise AdtnError(
                f"{where}: {name} {tuple(modes)} multiply to {math.prod(modes)}, but the matrix has {size} {axis}"
            )


def tt_matrix_svd(
    matrix: Tensor,
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    ranks: int | Sequence[int] | None = None,
    tol: float | None = None,
    method: Method = "auto",
) -> list[Tensor]:
    """TT-matrix of a (prod out) x (prod in) matrix, e.g. a linear layer's weight (out, in).

    W is read row-major as (out_1..out_d, in_1..in_d), permuted to (out_1, in_1, ..., out_d,
    in_d), each pair merged into one mode, then TT-SVD'd (``ranks``, ``tol`` as in tt_svd).

    Returns:
        d cores of shape (r_{k-1}, out_k, in_k, r_k), r_0 = r_d = 1.
    """
    where = "tt_matrix_svd"
    out_dtype = matrix.dtype if isinstance(matrix, Tensor) else None
    m = check_tensor(matrix, where, "matrix")
    out_modes, in_modes = tuple(int(o) for o in out_modes), tuple(int(i) for i in in_modes)
    _check_modes(m, out_modes, in_modes, where)
    d = len(out_modes)
    perm = [p for k in range(d) for p in (k, d + k)]
    t = m.reshape(out_modes + in_modes).permute(perm).reshape([o * i for o, i in zip(out_modes, in_modes)])
    cores = tt_svd(t, ranks, tol, method)
    return [c.reshape(c.shape[0], o, i, c.shape[-1]).to(out_dtype) for c, o, i in zip(cores, out_modes, in_modes)]


def tt_matrix_to_matrix(cores: Sequence[Tensor]) -> Tensor:
    """Dense (prod out_k) x (prod in_k) matrix from TT-matrix cores (r_{k-1}, out_k, in_k, r_k)."""
    check_cores(cores, "tt_matrix_to_matrix", ndim=4)
    out_modes = [c.shape[1] for c in cores]
    in_modes = [c.shape[2] for c in cores]
    d = len(cores)
    t = tt_to_tensor([c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores])
    t = t.reshape([s for o, i in zip(out_modes, in_modes) for s in (o, i)])
    t = t.permute(list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2)))
    return t.reshape(math.prod(out_modes), math.prod(in_modes))

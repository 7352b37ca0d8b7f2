"""Tucker and partial Tucker: HOSVD (De Lathauwer et al. 2000) with optional HOOI sweeps.

Factors are (n_k, r_k) with orthonormal columns; the core is the tensor projected on them, of
shape n_k -> r_k on the decomposed modes and unchanged elsewhere. A conv kernel
(out, in, kh, kw) with modes=(0, 1) gives Tucker-2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from adtn.errors import AdtnError, RankError

from .svd import Method, check_method, check_rank, check_tensor, left_factor


def mode_product(tensor: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """tensor x_mode matrix: contracts tensor's ``mode`` with matrix's columns (matrix is (p, n_mode))."""
    return torch.tensordot(matrix, tensor, dims=([1], [mode])).movedim(0, mode)


def _unfold(tensor: Tensor, mode: int) -> Tensor:
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def _modes_and_ranks(
    shape: tuple[int, ...], ranks: int | Sequence[int], modes: Sequence[int] | None, where: str
) -> tuple[list[int], list[int]]:
    d = len(shape)
    if modes is None:
        modes = list(range(d))
    modes = list(modes)
    for m in modes:
        if isinstance(m, bool) or not isinstance(m, int) or not -d <= m < d:
            raise AdtnError(f"{where}: modes must be integers in [-{d}, {d}), got {m!r}")
    modes = [m % d for m in modes]
    if len(set(modes)) != len(modes):
        raise AdtnError(f"{where}: modes must not repeat, got {modes}")
    if isinstance(ranks, Sequence) and not isinstance(ranks, str):
        if len(ranks) != len(modes):
            raise RankError(f"{where}: ranks must have one entry per decomposed mode ({len(modes)}), got {len(ranks)}")
        ranks = [check_rank(r, where, f"ranks[{i}]") for i, r in enumerate(ranks)]
    else:
        ranks = [check_rank(ranks, where, "ranks")] * len(modes)
    return modes, ranks


def _project(tensor: Tensor, factors: Sequence[Tensor], modes: Sequence[int], skip: int | None = None) -> Tensor:
    """tensor x_k U_k^H over modes (but skip), the most-shrinking modes first to keep it cheap."""
    order = sorted(
        (i for i in range(len(modes)) if i != skip),
        key=lambda i: factors[i].shape[1] / factors[i].shape[0],
    )
    for i in order:
        tensor = mode_product(tensor, factors[i].mH, modes[i])
    return tensor


def hosvd(
    tensor: Tensor,
    ranks: int | Sequence[int],
    modes: Sequence[int] | None = None,
    n_iter: int = 0,
    method: Method = "auto",
) -> tuple[Tensor, list[Tensor]]:
    """(Partial) Tucker by HOSVD, then ``n_iter`` HOOI sweeps (each never increases the error).

    Args:
        tensor: dense tensor.
        ranks: an int (every decomposed mode) or one rank per entry of ``modes``; clipped to
            min(n_k, product of the other sizes).
        modes: modes to decompose (default: all); the others keep their full size in the core.
        n_iter: HOOI sweeps (higher-order orthogonal iteration). A rank above the product of
            the other modes' (projected) sizes is clipped to it there.
        method: SVD method for the factors; "auto" takes the top eigenvectors of the n_k x n_k
            Gram matrix of each unfolding when that is safe (512 x 4608 -> eigh of 512 x 512).

    Returns:
        (core, factors): factors aligned with ``modes``, each (n_k, r_k) with orthonormal columns.
    """
    where = "hosvd"
    out_dtype = tensor.dtype if isinstance(tensor, Tensor) else None
    t = check_tensor(tensor, where)
    check_method(method, where)
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise AdtnError(f"{where}: n_iter must be an integer >= 0, got {n_iter!r}")
    modes, ranks = _modes_and_ranks(tuple(t.shape), ranks, modes, where)
    factors = [left_factor(_unfold(t, m), r, None, method, need_rest=False)[0] for m, r in zip(modes, ranks)]
    for _ in range(n_iter):
        for i, (m, r) in enumerate(zip(modes, ranks)):
            y = _project(t, factors, modes, skip=i)
            factors[i] = left_factor(_unfold(y, m), r, None, method, need_rest=False)[0]
    core = _project(t, factors, modes)
    return core.to(out_dtype), [f.to(out_dtype) for f in factors]


def tucker_to_tensor(core: Tensor, factors: Sequence[Tensor], modes: Sequence[int] | None = None) -> Tensor:
    """Dense tensor core x_k U_k over ``modes`` (default: the first len(factors) modes)."""
    where = "tucker_to_tensor"
    if modes is None:
        modes = list(range(len(factors)))
    if len(modes) != len(factors):
        raise AdtnError(f"{where}: need one factor per mode, got {len(factors)} factors for modes {list(modes)}")
    out = core
    for f, m in zip(factors, modes):
        if f.dim() != 2 or f.shape[1] != core.shape[m]:
            raise RankError(
                f"{where}: factor for mode {m} must be (n, {core.shape[m]}) to match the core, got {tuple(f.shape)}"
            )
        out = mode_product(out, f, m)
    return out

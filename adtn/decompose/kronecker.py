"""Sum of same-order Kronecker products (GKPD, Hameed et al. 2022) by Van Loan-Pitsianis.

Same-order Kronecker product, per mode: (A (x) B)[i * b_k + j, ...] = A[i, ...] * B[j, ...].
Read T (a_1 b_1, ..., a_d b_d) as (a_1, b_1, ..., a_d, b_d), gather (a_1..a_d, b_1..b_d), and
flatten to a (prod a) x (prod b) matrix: sum_r kron(A_r, B_r) becomes sum_r vec(A_r) vec(B_r)^T,
so the truncated SVD gives the best rank-R sum in Frobenius norm (Eckart-Young).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from adtn.errors import AdtnError

from .svd import Method, check_method, check_rank, check_tensor, truncated_svd


def _interleave(d: int) -> list[int]:
    """(a_1..a_d, b_1..b_d) -> (a_1, b_1, ..., a_d, b_d)."""
    return [p for k in range(d) for p in (k, d + k)]


def _split(d: int) -> list[int]:
    """(a_1, b_1, ..., a_d, b_d) -> (a_1..a_d, b_1..b_d)."""
    return list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2))


def kronecker_svd(
    tensor: Tensor,
    a_shape: Sequence[int],
    b_shape: Sequence[int],
    rank: int,
    method: Method = "auto",
) -> tuple[Tensor, Tensor]:
    """Best sum of ``rank`` Kronecker products: tensor ~= sum_r kron(A[r], B[r]).

    Args:
        tensor: dense tensor with d modes, e.g. a conv kernel (F, C, Kh, Kw).
        a_shape, b_shape: d sizes each, a_shape[k] * b_shape[k] == tensor.shape[k].
        rank: number of terms R; clipped to min(prod a_shape, prod b_shape), which is exact.
        method: SVD method, as in truncated_svd.

    Returns:
        (A, B) with A (R, *a_shape) = s_r u_r and B (R, *b_shape) = v_r (unit norm).
    """
    where = "kronecker_svd"
    out_dtype = tensor.dtype if isinstance(tensor, Tensor) else None
    t = check_tensor(tensor, where)
    check_method(method, where)
    rank = check_rank(rank, where)
    a_shape, b_shape = tuple(int(a) for a in a_shape), tuple(int(b) for b in b_shape)
    d = t.dim()
    if len(a_shape) != d or len(b_shape) != d:
        raise AdtnError(
            f"{where}: a_shape and b_shape need one size per tensor mode ({d}), got {len(a_shape)} and {len(b_shape)}"
        )
    for k, (a, b, n) in enumerate(zip(a_shape, b_shape, t.shape)):
        if a < 1 or b < 1 or a * b != n:
            raise AdtnError(
                f"{where}: a_shape[{k}] * b_shape[{k}] must equal tensor.shape[{k}], got {a} * {b} = {a * b} != {n}"
            )
    pa, pb = math.prod(a_shape), math.prod(b_shape)
    mat = t.reshape([s for ab in zip(a_shape, b_shape) for s in ab]).permute(_split(d)).reshape(pa, pb)
    u, s, vh = truncated_svd(mat, min(rank, pa, pb), method=method)
    a_terms = (u * s.to(u.dtype)).mT.reshape(-1, *a_shape)
    b_terms = vh.reshape(-1, *b_shape)
    return a_terms.to(out_dtype), b_terms.to(out_dtype)


def kron_to_tensor(a: Tensor, b: Tensor) -> Tensor:
    """Dense sum_r kron(A[r], B[r]) from A (R, *a_shape) and B (R, *b_shape)."""
    where = "kron_to_tensor"
    if a.dim() != b.dim() or a.dim() < 2 or a.shape[0] != b.shape[0]:
        raise AdtnError(
            f"{where}: A and B must be (R, *a_shape) and (R, *b_shape) with the same R and order, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a_shape, b_shape = a.shape[1:], b.shape[1:]
    d = len(a_shape)
    mat = a.reshape(a.shape[0], -1).mT @ b.reshape(b.shape[0], -1)
    t = mat.reshape(*a_shape, *b_shape).permute(_interleave(d))
    return t.reshape([x * y for x, y in zip(a_shape, b_shape)])

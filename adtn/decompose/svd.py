"""Truncated SVD helpers shared by every decomposition: input checks, rank from tolerance,
and a Gram + eigh fast path that replaces a full SVD when one side of the matrix is small.

Why the Gram path: TT, HT and Tucker unfoldings are very unbalanced (64 x 262144, 512 x 4608).
An SVD of such a matrix costs far more than ``M @ M.H`` (one GEMM) plus an eigh of the small
side. The Gram matrix squares the condition number, so its eigenvalues carry an absolute error
of about ``eps * s_max^2``; "auto" uses it only where that error cannot change the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from adtn.errors import AdtnError, RankError

Method = Literal["auto", "svd", "gram"]
METHODS = ("auto", "svd", "gram")

# Gram eigenvalues are trusted above _SAFETY times their round-off (see _floor).
_SAFETY = 100.0


def check_tensor(tensor: Tensor, where: str, name: str = "tensor") -> Tensor:
    """Validate a dense input and return it in a dtype torch.linalg supports (half -> float32)."""
    if not isinstance(tensor, Tensor):
        raise AdtnError(f"{where}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise AdtnError(f"{where}: {name} must have a floating or complex dtype, got {tensor.dtype}")
    if tensor.numel() == 0:
        raise AdtnError(f"{where}: {name} must not be empty, got shape {tuple(tensor.shape)}")
    if torch.isnan(tensor).any():
        raise AdtnError(f"{where}: {name} contains NaN")
    if torch.isinf(tensor).any():
        raise AdtnError(f"{where}: {name} contains inf")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor


def check_rank(rank: int, where: str, name: str = "rank") -> int:
    """A rank must be an integer >= 1 (larger than possible is clipped later, never an error)."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        try:
            as_int = int(rank)
        except (TypeError, ValueError):
            as_int = None
        if as_int is None or as_int != rank:
            raise RankError(f"{where}: {name} must be an integer >= 1, got {rank!r}")
        rank = as_int
    if rank < 1:
        raise RankError(f"{where}: {name} must be >= 1, got {rank}")
    return rank


def check_tol(tol: float | None, where: str) -> float | None:
    """A tolerance is a relative Frobenius error and must be > 0 (or None for 'no tolerance')."""
    if tol is None:
        return None
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not math.isfinite(tol) or tol <= 0:
        raise RankError(f"{where}: tol must be a finite number > 0, got {tol!r}")
    return float(tol)


def check_method(method: str, where: str) -> str:
    if method not in METHODS:
        raise AdtnError(f"{where}: method must be one of {list(METHODS)}, got {method!r}")
    return method


def _tail_energy(energy: Tensor) -> Tensor:
    """tail[r] = sum_{i >= r} energy[i], in float64 so long tails do not lose digits."""
    e = energy.detach().to(torch.float64)
    return e.flip(0).cumsum(0).flip(0)


def rank_for_delta(s: Tensor, delta: float) -> int:
    """Smallest r >= 1 whose discarded tail sqrt(sum_{i>=r} s_i^2) is <= delta (absolute)."""
    tail = _tail_energy(s.abs() ** 2)
    return max(1, int((tail > delta * delta).sum().item()))


def rank_for_tol(s: Tensor, tol: float) -> int:
    """Smallest r >= 1 with relative Frobenius error sqrt(sum_{i>=r} s_i^2) / ||s|| <= tol.

    ``s`` holds singular values in descending order.
    """
    tol = check_tol(tol, "rank_for_tol")
    norm = float(torch.linalg.vector_norm(s.detach().to(torch.float64)))
    return rank_for_delta(s, tol * norm)


def _gram(matrix: Tensor, wide: bool) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the smaller Gram matrix, descending; eigenvalues clamped at zero."""
    g = matrix @ matrix.mH if wide else matrix.mH @ matrix
    lam, vec = torch.linalg.eigh(g)
    return lam.flip(0).clamp_min(0), vec.flip(1)


def _floor(lam: Tensor, inner: int, dtype: torch.dtype) -> float:
    """Typical absolute round-off of Gram eigenvalues: eps * sqrt(inner length) * lambda_max."""
    return torch.finfo(dtype).eps * math.sqrt(inner) * float(lam[0])


def _gram_is_safe(lam: Tensor, r: int, delta: float | None, inner: int, dtype: torch.dtype, full: bool) -> bool:
    """Can the Gram eigenvalues be trusted for this truncation?

    Eigenvalues carry an absolute error of about ``floor``. The result is as good as the SVD's
    when the kept ones are well above it, or when the discarded energy dwarfs r * floor (the most
    the junk directions could lose), and the rank chosen from delta is reliable when delta^2 is
    well above that error too. ``full``: keeping every direction is exact whatever the eigenvalues.
    """
    floor = _floor(lam, inner, dtype)
    if floor == 0.0:
        return True
    k = lam.numel()
    if delta is not None and delta * delta < _SAFETY * math.sqrt(k) * floor and r < k:
        return False
    if full and r == k:
        return True
    tail = float(lam[r:].sum()) if r < k else 0.0
    return float(lam[r - 1]) >= _SAFETY * floor or tail >= _SAFETY * r * floor


def left_factor(
    matrix: Tensor,
    rank: int | None = None,
    delta: float | None = None,
    method: Method = "auto",
    need_rest: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Split ``matrix ~= U @ rest`` with orthonormal columns U (m x r); the TT/HT/Tucker workhorse.

    r is the smallest rank whose discarded tail is <= ``delta`` (absolute Frobenius), capped by
    ``rank`` and by min(m, n). Returns (U, rest or None, singular values estimate).
    """
    m, n = matrix.shape
    k = min(m, n)
    cap = k if rank is None else min(rank, k)
    if method != "svd":
        wide = m <= n
        lam, vec = _gram(matrix, wide)
        s = lam.sqrt()
        r = cap if delta is None else min(cap, rank_for_delta(s, delta))
        real = matrix.real.dtype if matrix.is_complex() else matrix.dtype
        if method == "gram" or _gram_is_safe(lam, r, delta, max(m, n), real, full=True):
            v = vec[:, :r]
            if wide:
                return v, (v.mH @ matrix if need_rest else None), s
            q, rr = torch.linalg.qr(matrix @ v)
            return q, (rr @ v.mH if need_rest else None), s
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = cap if delta is None else min(cap, rank_for_delta(s, delta))
    rest = s[:r, None].to(vh.dtype) * vh[:r] if need_rest else None
    return u[:, :r], rest, s


def truncated_svd(
    matrix: Tensor,
    rank: int | None = None,
    tol: float | None = None,
    method: Method = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated SVD ``matrix ~= U @ diag(S) @ Vh`` with rank from ``rank`` and/or ``tol``.

    ``tol`` is a relative Frobenius error; with both, the rank is the smaller of the two. A rank
    above min(m, n) is clipped. "gram" computes the small side's eigenvectors and gets the other
    side by projection; "auto" does so only when the kept singular values are far above the
    Gram round-off (about sqrt(eps) * s_max), since Vh = U^H M / s amplifies it for small s.
    """
    where = "truncated_svd"
    matrix = check_tensor(matrix, where, "matrix")
    if matrix.dim() != 2:
        raise AdtnError(f"{where}: matrix must be 2-D, got shape {tuple(matrix.shape)}")
    rank = None if rank is None else check_rank(rank, where)
    tol = check_tol(tol, where)
    check_method(method, where)
    m, n = matrix.shape
    k = min(m, n)
    cap = k if rank is None else min(rank, k)
    if method != "svd":
        wide = m <= n
        lam, vec = _gram(matrix, wide)
        s = lam.sqrt()
        r = cap if tol is None else min(cap, rank_for_tol(s, tol))
        delta = None if tol is None else tol * float(s.norm())
        real = matrix.real.dtype if matrix.is_complex() else matrix.dtype
        kept_ok = float(lam[r - 1]) >= _SAFETY * _floor(lam, max(m, n), real)
        if method == "gram" or (kept_ok and _gram_is_safe(lam, r, delta, max(m, n), real, full=False)):
            v = vec[:, :r]
            w = v.mH @ matrix if wide else (matrix @ v).mT  # r x n (wide) or r x m
            sv = torch.linalg.vector_norm(w, dim=1)
            w = w / torch.where(sv == 0, torch.ones_like(sv), sv)[:, None]
            if wide:
                return v, sv, w
            return w.mT, sv, v.mH
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = cap if tol is None else min(cap, rank_for_tol(s, tol))
    return u[:, :r], s[:r], vh[:r]


def normalize_ranks(
    ranks: int | Sequence[int] | None, n_bonds: int, where: str, allow_ends: bool = True
) -> list[int | None]:
    """Per-bond rank caps from an int (uniform), a sequence, or None (no cap).

    With ``allow_ends`` a sequence may also list the n_bonds + 2 ranks including r_0 = r_d = 1.
    """
    if ranks is None:
        return [None] * n_bonds
    if isinstance(ranks, Sequence) and not isinstance(ranks, str):
        ranks = list(ranks)
        if allow_ends and len(ranks) == n_bonds + 2:
            if ranks[0] != 1 or ranks[-1] != 1:
                raise RankError(f"{where}: boundary ranks r_0 and r_d must be 1, got {ranks[0]} and {ranks[-1]}")
            ranks = ranks[1:-1]
        if len(ranks) != n_bonds:
            extra = f" or {n_bonds + 2} (with r_0 = r_d = 1)" if allow_ends else ""
            raise RankError(f"{where}: ranks must have {n_bonds}{extra} entries, got {len(ranks)}")
        return [check_rank(r, where, f"ranks[{i}]") for i, r in enumerate(ranks)]
    return [check_rank(ranks, where, "ranks")] * n_bonds

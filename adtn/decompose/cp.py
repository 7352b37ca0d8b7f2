"""CP (CANDECOMP/PARAFAC) by alternating least squares, with a degeneracy warning.

The result is (weights (R,), factors [(n_k, R)]) with unit-norm factor columns, sorted by
weight. Best rank-R CP approximations need not exist (the set is not closed): ALS then drives
two or more components to grow without bound while cancelling each other. Such a fit is
numerically useless for compression, so cp_als warns about it.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor

from adtn.errors import AdtnError

from .svd import check_rank, check_tensor, check_tol


def cp_to_tensor(weights: Tensor, factors: list[Tensor]) -> Tensor:
    """Dense tensor sum_r weights[r] * a_r^1 o ... o a_r^d from factors (n_k, R)."""
    if len(factors) == 0:
        raise AdtnError("cp_to_tensor: need at least one factor, got 0")
    rank = weights.shape[0]
    for k, f in enumerate(factors):
        if f.dim() != 2 or f.shape[1] != rank:
            raise AdtnError(f"cp_to_tensor: factor {k} must be (n_{k}, {rank}), got {tuple(f.shape)}")
    out = factors[0] * weights
    for f in factors[1:]:
        out = (out.reshape(-1, 1, rank) * f.reshape(1, -1, rank)).reshape(-1, rank)
    return out.sum(1).reshape([f.shape[0] for f in factors])


def _mttkrp(t: Tensor, factors: list[Tensor], mode: int) -> Tensor:
    """T_(mode) @ khatri_rao(other factors): (n_mode, R), without forming the Khatri-Rao product."""
    d = t.dim()
    ops: list = [t, list(range(d))]
    for j, f in enumerate(factors):
        if j != mode:
            ops += [f, [j, d]]
    return torch.einsum(*ops, [mode, d])


def _init(t: Tensor, rank: int, init: str, gen: torch.Generator) -> list[Tensor]:
    factors = []
    for k, n in enumerate(t.shape):
        rand = torch.randn(n, rank, generator=gen, dtype=torch.float64).to(t.device, t.dtype)
        if init == "svd":
            u = torch.linalg.svd(t.movedim(k, 0).reshape(n, -1), full_matrices=False)[0][:, :rank]
            if u.shape[1] < rank:
                u = torch.cat([u, rand[:, u.shape[1] :] / math.sqrt(n)], dim=1)
            factors.append(u)
        else:
            factors.append(rand / math.sqrt(n))
    return factors


def _solve(gram: Tensor, rhs: Tensor) -> Tensor:
    """X with X @ gram = rhs (gram symmetric R x R); pseudo-inverse when it is singular."""
    x, info = torch.linalg.solve_ex(gram, rhs.mT)
    if int(info) != 0 or not torch.isfinite(x).all():
        x = torch.linalg.pinv(gram, hermitian=True) @ rhs.mT
    return x.mT


def _check_degenerate(weights: Tensor, factors: list[Tensor], norm: float, rank: int) -> None:
    """Warn when components are large and cancel: the signature of a diverging CP fit."""
    if norm == 0.0:
        return
    energy = float((weights**2).sum()) / norm**2
    congruence = torch.ones(rank, rank, dtype=weights.dtype, device=weights.device)
    for f in factors:
        congruence = congruence * (f.mT @ f)
    congruence.fill_diagonal_(0)
    big = weights.abs() > norm
    pair = (congruence.abs() > 0.95) & big[:, None] & big[None, :]
    if energy > 10.0 or bool(pair.any()):
        worst = float(congruence.abs().max()) if rank > 1 else 0.0
        warnings.warn(
            f"cp_als: the rank-{rank} fit looks degenerate: components are large and cancel "
            f"(sum of weights^2 = {energy:.3g} x ||tensor||^2, max congruence {worst:.3f}); "
            f"the tensor may have no best rank-{rank} approximation; try a lower rank",
            RuntimeWarning,
            stacklevel=3,
        )


def cp_als(
    tensor: Tensor,
    rank: int,
    n_iter: int = 100,
    tol: float = 1e-8,
    init: Literal["svd", "random"] = "svd",
    seed: int | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """CP decomposition by ALS, stopping when the relative error changes by less than ``tol``.

    Args:
        tensor: dense real tensor with at least 2 modes.
        rank: number of rank-one components R (any R >= 1; above the tensor's rank the extra
            components soak up round-off).
        n_iter: maximum ALS sweeps.
        tol: stop when |err_prev - err| < tol, err the relative Frobenius error.
        init: "svd" (leading left singular vectors of each unfolding, random columns past n_k)
            or "random" (Gaussian).
        seed: seed for the random parts of the initialisation.

    Returns:
        (weights (R,), factors [(n_k, R)]) with unit-norm columns, sorted by decreasing weight.
        Warns (RuntimeWarning) when the fit is degenerate.
    """
    where = "cp_als"
    out_dtype = tensor.dtype if isinstance(tensor, Tensor) else None
    t = check_tensor(tensor, where)
    if t.is_complex():
        raise AdtnError(f"{where}: tensor must be real, got dtype {t.dtype}")
    if t.dim() < 2:
        raise AdtnError(f"{where}: CP needs a tensor with at least 2 modes, got shape {tuple(t.shape)}")
    rank = check_rank(rank, where)
    tol = check_tol(tol, where)
    if init not in ("svd", "random"):
        raise AdtnError(f"{where}: init must be 'svd' or 'random', got {init!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise AdtnError(f"{where}: n_iter must be an integer >= 1, got {n_iter!r}")
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    factors = _init(t, rank, init, gen)
    d = t.dim()
    norm = float(torch.linalg.vector_norm(t))
    grams = [f.mT @ f for f in factors]
    weights = torch.ones(rank, dtype=t.dtype, device=t.device)
    err_prev = math.inf
    for _ in range(n_iter):
        for k in range(d):
            v = torch.ones(rank, rank, dtype=t.dtype, device=t.device)
            for j in range(d):
                if j != k:
                    v = v * grams[j]
            m = _mttkrp(t, factors, k)
            f = _solve(v, m)
            w = torch.linalg.vector_norm(f, dim=0)
            factors[k] = f / torch.where(w == 0, torch.ones_like(w), w)
            weights = w
            grams[k] = factors[k].mT @ factors[k]
        # ||T - X||^2 = ||T||^2 - 2 <T, X> + ||X||^2, with X's last factor f = factors[-1] * weights
        inner = float((m * f).sum())
        full = grams[-1] * v
        sq = float(weights @ full @ weights)
        err = math.sqrt(max(norm**2 - 2 * inner + sq, 0.0)) / (norm if norm else 1.0)
        if abs(err_prev - err) < tol:
            break
        err_prev = err
    order = torch.argsort(weights, descending=True)
    weights = weights[order]
    factors = [f[:, order] for f in factors]
    _check_degenerate(weights, factors, norm, rank)
    return weights.to(out_dtype), [f.to(out_dtype) for f in factors]

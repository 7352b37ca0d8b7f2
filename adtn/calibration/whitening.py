"""Whitening factors of a second moment ``Sigma``: damped Cholesky, its inverse, and Kronecker factors.

``||(W - W_hat) L||_F`` with ``L L^T = Sigma`` is the output error; a decomposition of ``W L``
un-whitened by ``L^{-1}`` minimises it. A network can only un-whiten where it has an open
leg, so for a format with in-legs on several cores ``Sigma`` is approximated by a Kronecker
product over the cores' leg groups, ``Sigma ~ Sigma_1 (x) ... (x) Sigma_d`` (the rearranged
nearest Kronecker product of Van Loan and Pitsianis, computed by alternating power steps from
the partial traces, which are already exact when ``Sigma`` is a Kronecker product).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import AdtnError

__all__ = ["cholesky_factor", "inverse_factor", "kron_error", "kron_factors", "permute_features"]


def cholesky_factor(sigma: Tensor, damping: float = 0.0) -> Tensor:
    """Lower-triangular ``L`` with ``L L^T = Sigma + lambda I``, ``lambda = damping * mean eigenvalue``.

    A singular ``Sigma`` (fewer samples than features, dead inputs) with ``damping = 0`` gets the
    smallest floor that factors (from 1e-10 of the mean eigenvalue up); an all-zero ``Sigma``
    gives the identity (any weight has zero output error there).
    """
    sigma = 0.5 * (sigma + sigma.mT)
    n = sigma.shape[-1]
    scale = float(sigma.diagonal(dim1=-2, dim2=-1).mean()) if n else 0.0
    eye = torch.eye(n, dtype=sigma.dtype, device=sigma.device)
    if scale <= 0 or not math.isfinite(scale):
        return eye.expand_as(sigma).clone()
    floor = damping
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(sigma + floor * scale * eye)
        if not bool((info != 0).any()):
            return L
        floor = max(floor * 10, 1e-10)
    raise AdtnError(f"whitening: the covariance does not factor even with damping {floor:g} (NaN in it?)")


def inverse_factor(L: Tensor) -> Tensor:
    """``L^{-1}`` by a triangular solve."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
    return torch.linalg.solve_triangular(L, eye, upper=False)


def permute_features(sigma: Tensor, sizes: Sequence[int], groups: Sequence[Sequence[int]]) -> Tensor:
    """``Sigma`` over the features fused row-major from ``sizes``, reordered so the legs of each
    group (positions into ``sizes``) are contiguous, the groups in order."""
    n = math.prod(sizes)
    if sigma.shape[-1] != n:
        raise AdtnError(f"whitening: legs {tuple(sizes)} fuse to {n} features, the covariance has {sigma.shape[-1]}")
    perm = [p for g in groups for p in g]
    if sorted(perm) != list(range(len(sizes))):
        raise AdtnError(f"whitening: groups {groups} must cover the {len(sizes)} legs once each")
    d = len(sizes)
    t = sigma.reshape(*sizes, *sizes).permute(*perm, *(d + p for p in perm))
    return t.reshape(n, n)


def _factor_sizes(sizes: Sequence[int], groups: Sequence[Sequence[int]]) -> list[int]:
    return [math.prod(sizes[p] for p in g) for g in groups]


def kron_factors(sigma: Tensor, sizes: Sequence[int], groups: Sequence[Sequence[int]] | None = None,
                 method: str = "nearest", sweeps: int = 10) -> list[Tensor]:
    """Factors ``Sigma_k`` (one per group of legs) with ``Sigma ~ (x)_k Sigma_k``.

    Args:
        sigma: (n, n), ``n = prod(sizes)``, features fused row-major from legs of ``sizes``.
        sizes: the legs' sizes.
        groups: positions of the legs of each factor (default: one leg each); a factor's legs
            are fused in the order given.
        method: ``"marginal"`` (partial traces, scaled; exact on a Kronecker product) or
            ``"nearest"`` (the Frobenius-nearest Kronecker product: alternating power steps
            on the rearranged ``Sigma``, started from the partial traces).
    """
    groups = [list(g) for g in (groups if groups is not None else [[k] for k in range(len(sizes))])]
    if method not in ("marginal", "nearest"):
        raise AdtnError(f"whitening: method must be 'marginal' or 'nearest', got {method!r}")
    m = _factor_sizes(sizes, groups)
    sig = permute_features(sigma, sizes, groups)
    d = len(m)
    if d == 1:
        return [sig]
    t = sig.reshape(*m, *m)
    total = float(sig.trace())
    factors = []
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for k in range(d):  # partial trace over all the other factors
        others = [j for j in range(d) if j != k]
        idx = list(range(2 * d))
        for j in others:
            idx[d + j] = j
        spec = "".join(letters[i] for i in idx) + "->" + letters[k] + letters[d + k]
        factors.append(torch.einsum(spec, t))
    if total > 0:
        factors = [f / total ** ((d - 1) / d) for f in factors]
    if method == "marginal" or total <= 0:
        return factors
    # rank-1 of the rearranged tensor R[(a1 b1), (a2 b2), ...] = Sigma[(a1 a2 ..), (b1 b2 ..)]
    r = t.permute(*[x for k in range(d) for x in (k, d + k)]).reshape([mk * mk for mk in m])
    vecs = [f.reshape(-1) for f in factors]
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(sweeps):
        for k in range(d):
            others = [j for j in range(d) if j != k]
            spec = letters[:d] + "," + ",".join(letters[j] for j in others) + "->" + letters[k]
            v = torch.einsum(spec, r, *(vecs[j] for j in others))
            scale = math.prod(float(vecs[j] @ vecs[j]) for j in others)
            if scale == 0 or not bool(torch.isfinite(v).all()):
                return factors
            vecs[k] = v / scale
    out = [v.reshape(mk, mk) for v, mk in zip(vecs, m)]
    out = [0.5 * (f + f.mT) for f in out]
    signs = [1.0 if float(f.trace()) >= 0 else -1.0 for f in out]
    flip = math.prod(signs)
    out = [f * s for f, s in zip(out, signs)]
    if flip < 0:  # an odd number of negative factors cannot come from a positive Sigma; keep the marginals
        return factors
    scale = (math.prod(float(torch.linalg.vector_norm(f)) for f in out)) ** (1 / d)
    return [f / float(torch.linalg.vector_norm(f)) * scale for f in out]


def kron(factors: Sequence[Tensor]) -> Tensor:
    out = factors[0]
    for f in factors[1:]:
        out = torch.kron(out, f)
    return out


def kron_error(sigma: Tensor, factors: Sequence[Tensor], sizes: Sequence[int],
               groups: Sequence[Sequence[int]] | None = None) -> float:
    """``||Sigma - (x)_k Sigma_k||_F / ||Sigma||_F`` (in the groups' feature order)."""
    groups = [list(g) for g in (groups if groups is not None else [[k] for k in range(len(sizes))])]
    sig = permute_features(sigma, sizes, groups)
    norm = float(torch.linalg.matrix_norm(sig))
    return float(torch.linalg.matrix_norm(sig - kron(factors))) / norm if norm else 0.0

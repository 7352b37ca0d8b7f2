"""Shape search: pick how a weight is split into factors, not only the rank (issue 8).

For ``kronecker`` every axis n_k is split a_k * b_k over its divisors; for ``tt`` the out and
in axes are split into (o_1, o_2) and (i_1, i_2) pairs (plus the balanced default modes). The
rank for each candidate is the largest that fits the budget, and its error comes from singular
values alone, before any decomposition:

- a Kronecker split's error is exact: the tail of the singular values of the Van Loan
  rearranged matrix (rows a_1..a_d, columns b_1..b_d), sqrt(sum_{k>R} s_k^2) / ||W||;
- a TT's error is bounded by the tails of each bond's unfolding (Oseledets): sqrt(sum over
  bonds of tail^2) / ||W||; with two cores it is exact (a truncated SVD).

Unbalanced candidates are kept: Kronecker a = (out, 1, ...), b = (1, in, kh, kw) and TT modes
((out, 1), (1, in)) are a truncated SVD of the weight, which trained weights often favour
(METHODS.md). The best few estimates, the default shape and the SVD-like shape are then
decomposed for real when the weight is small enough, so ``auto`` is never worse than either.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import AdtnError, RankError, TemplateError
from .templates import get
from .templates.factor import _divisors, default_modes, factorize, weight_axes

__all__ = ["SEARCHABLE", "ShapeChoice", "search"]

SEARCHABLE = ("kronecker", "tt")
_EXACT_NUMEL = 2**16  # full svdvals (float64) below this many entries, randomized top-r above
_SKETCH = 12  # singular vectors of the screening sketch
_REFINE_NUMEL = 2**18  # decompose the finalists for real below this many weight entries


@dataclass(frozen=True)
class ShapeChoice:
    """The shape ``search`` chose: build options, rank, error and the runners-up.

    ``error`` is the relative Frobenius error of the weight (measured by decomposing when
    ``measured``, else from singular values); ``runners_up`` holds (options, error) of the
    next best shapes; ``default_error`` the error of the template's default shape (None when
    it does not fit the budget)."""

    template: str
    options: dict[str, Any]
    rank: int
    error: float
    params: int
    measured: bool
    runners_up: tuple[tuple[dict[str, Any], float], ...] = ()
    default_error: float | None = None
    candidates: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for ``extra_repr`` and reports: the shape, its error and the best runner-up's."""
        text = f"{_fmt(self.options)} rank={self.rank} err={self.error:.4f}"
        if self.runners_up:
            opts, err = self.runners_up[0]
            text += f"; next {_fmt(opts)} err={err:.4f}"
        if self.default_error is not None:
            text += f"; default err={self.default_error:.4f}"
        return text + f"; {self.candidates} candidates"


def _fmt(options: Mapping[str, Any]) -> str:
    if "factors" in options:
        a, b = options["factors"]
        return f"factors={tuple(a.values())}x{tuple(b.values())}"
    out, inn = options["modes"]
    return f"modes={tuple(out)},{tuple(inn)}"


@dataclass
class _Cand:
    options: dict[str, Any]
    rank: int
    params: int
    cost: float
    tag: str = ""
    estimate: float = math.inf
    error: float | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- singular value tails
def _top_energy(mat: Tensor, q: int, k: int, niter: int) -> float:
    """Sum of the top-k squared singular values seen by a q-wide random sketch (a lower bound)."""
    g = torch.Generator(device=mat.device).manual_seed(0)
    y = mat @ torch.randn(mat.shape[1], q, generator=g, dtype=mat.dtype, device=mat.device)
    for _ in range(niter):
        y = mat @ (mat.mT @ torch.linalg.qr(y)[0])
    s = torch.linalg.svdvals(torch.linalg.qr(y)[0].mT @ mat)
    return float((s[:k].double() ** 2).sum())


def _tail2(mat: Tensor, r: int, total: float, precise: bool, sketch: int | None = None) -> float:
    """Squared Frobenius norm (``total``) of ``mat`` minus its best rank-r part; with ``sketch``,
    minus its best rank-min(r, sketch) part seen by one random sketch (a cheap upper bound)."""
    m = min(mat.shape)
    if r >= m:
        return 0.0
    if precise or mat.numel() <= _EXACT_NUMEL:
        small = mat.double() if mat.numel() <= _EXACT_NUMEL else mat
        s = torch.linalg.svdvals(small)
        return float((s[r:].double() ** 2).sum())
    if sketch is not None and r > sketch:
        return max(total - _top_energy(mat, min(sketch + 4, m), sketch, 0), 0.0)
    if m <= 2 * r + 20:  # the Gram of the small side: one GEMM and a small eigh
        side = mat if mat.shape[0] == m else mat.mT
        lam = torch.linalg.eigvalsh((side @ side.mT).double())
        return float(lam[: m - r].clamp_min(0).sum())
    return max(total - _top_energy(mat, min(r + 8, m), r, 1), 0.0)


def _chain_tensor(dense: Tensor, axes: Mapping[str, int], modes: Sequence[Sequence[int]]) -> tuple[Tensor, list[int]]:
    """The weight regrouped by TT core (spatial first) and the size of each core's open legs."""
    spatial = weight_axes(axes, "shape search")[2]
    m_out, m_in = modes
    d, s = len(m_out), len(spatial)
    t = dense.reshape(*m_out, *m_in, *[axes[ax] for ax in spatial])
    perm = [2 * d + k for k in range(s)] + [p for k in range(d) for p in (k, d + k)]
    groups = ([math.prod(axes[ax] for ax in spatial)] if spatial else []) + [o * i for o, i in zip(m_out, m_in)]
    return t.permute(perm).reshape(groups), groups


def _kron_matrix(dense: Tensor, a: Sequence[int], b: Sequence[int]) -> Tensor:
    d = len(a)
    t = dense.reshape([s for ab in zip(a, b) for s in ab])
    return t.permute(list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2))).reshape(math.prod(a), math.prod(b))


# ---------------------------------------------------------------------- candidates per template
def _kron_candidates(axes: dict[str, int], budget: float) -> list[_Cand]:
    from .templates.kronecker import default_factors

    names, dense = list(axes), math.prod(axes.values())
    default = default_factors(axes)
    svd_a = tuple(axes[ax] if k == 0 else 1 for k, ax in enumerate(names))
    found = []
    for a in itertools.product(*[_divisors(axes[ax]) for ax in names]):
        b = tuple(axes[ax] // x for ax, x in zip(names, a))
        is_default = a == tuple(default[0].values())
        if b == svd_a or (a > b and a != svd_a and not is_default):  # (a, b), (b, a): same error
            continue
        pa, pb = math.prod(a), math.prod(b)
        rank = min(int(budget * dense // (pa + pb)), pa, pb)
        if rank < 1:
            continue
        tag = "default" if is_default else "svd" if a == svd_a or b == svd_a else ""
        opts = {"factors": (dict(zip(names, a)), dict(zip(names, b)))}
        found.append(_Cand(opts, rank, rank * (pa + pb), min(pa, pb) * dense, tag, extra={"ab": (a, b)}))
    return found


def _tt_candidates(axes: dict[str, int], budget: float) -> list[_Cand]:
    from .api import _knob_for_budget
    from .templates.tt import _chain

    t = get("tt")
    out, inn, spatial = weight_axes(axes, "shape search")
    dense = math.prod(axes.values())
    pairs = [((o, axes[out] // o), (i, axes[inn] // i)) for o in _divisors(axes[out]) for i in _divisors(axes[inn])]
    default_d = max(2, len(default_modes(axes)[out]))
    default = (factorize(axes[out], default_d), factorize(axes[inn], default_d))
    svd = ((axes[out], 1), (1, axes[inn]))
    # a linear 2-core chain read backwards is the same split: keep one of the two (and the SVD one)
    modes_list = [(tuple(mo), tuple(mi)) for mo, mi in pairs if (mo[1], mi[1]) != (1, 1) and (mo[0], mi[0]) != (1, 1)
                  and (spatial or (mo, mi) == svd or ((mo[1], mo[0]), (mi[1], mi[0])) == svd
                       or (mo[0], mi[0]) <= (mo[1], mi[1]))]
    modes_list = [m for m in modes_list if spatial or m != ((1, axes[out]), (axes[inn], 1))]
    modes_list += [((axes[out],), (axes[inn],))] if spatial else []
    modes_list += [default] if default not in modes_list else []
    found = []
    for modes in modes_list:
        try:
            rank = _knob_for_budget("shape search", t, axes, "rank", {"modes": modes, "clip": True}, budget, dense)
        except AdtnError:
            continue
        chain = _chain(axes, rank, modes, None, True, False, "tt", {})
        ranks = [r for r in chain.right if r is not None]
        is_svd = not spatial and modes == svd
        tag = "default" if modes == default else "svd" if is_svd or len(modes[0]) == 1 else ""
        found.append(_Cand({"modes": modes}, rank, chain.num_params, sum(ranks) * dense, tag, extra={"ranks": ranks}))
    return found


def _estimate(template: str, dense: Tensor, axes: dict[str, int], cand: _Cand, precise: bool,
              sketch: int | None = None) -> float:
    """Relative error of a candidate from singular values (exact for Kronecker and 2-core TT)."""
    norm2 = cand.extra["norm2"]
    if template == "kronecker":
        a, b = cand.extra["ab"]
        return math.sqrt(_tail2(_kron_matrix(dense, a, b), cand.rank, norm2, precise, sketch) / norm2)
    t, groups = _chain_tensor(dense, axes, cand.options["modes"])
    tails = sum(_tail2(t.reshape(math.prod(groups[: k + 1]), -1), r, norm2, precise, sketch)
                for k, r in enumerate(cand.extra["ranks"]))
    return math.sqrt(tails / norm2)


def _measure(template: str, dense: Tensor, axes: dict[str, int], cand: _Cand) -> float:
    """Relative error after decomposing with the template's initialiser."""
    from .templates.init_common import contract

    opts = dict(cand.options) | ({"clip": True} if template == "tt" else {})
    graph, tensors = get(template).init(dense, axes, rank=cand.rank, **opts)
    approx = contract(graph, tensors)
    return float(torch.linalg.vector_norm(approx - dense) / torch.linalg.vector_norm(dense).clamp_min(1e-30))


# ---------------------------------------------------------------------- the search
def search(
    template: str,
    dense: Tensor,
    axes: Mapping[str, int],
    budget: float,
    *,
    candidates: Sequence[Mapping[str, Any]] | None = None,
    max_candidates: int = 32,
    refine: int = 3,
    screen: int | None = None,
) -> ShapeChoice:
    """The shape (``factors=`` or ``modes=``) and rank with the lowest weight error at ``budget``.

    Args:
        template: ``"kronecker"`` or ``"tt"``.
        dense: the weight, shaped like ``axes`` (out, in[, kh, kw]).
        axes: the weight's axes, name -> size.
        budget: a fraction of the dense parameter count.
        candidates: restrict the search to these build options (each ``{"factors": ...}`` or
            ``{"modes": ...}``); default: every divisor split (see the module docstring).
        max_candidates: at most this many candidates get an error estimate,
            those that use most of the budget first (the default and SVD-like shapes always do).
        screen: this many of the best one-sketch bounds get a full top-r estimate (default 3
            for kronecker, 8 for tt, whose bounds over several bonds are looser).
        refine: this many of the best estimates (plus default and SVD-like) are decomposed for
            real when the weight has at most 2**18 entries.

    Returns:
        A ``ShapeChoice``.
    """
    start = time.perf_counter()
    if template not in SEARCHABLE:
        raise TemplateError(f"shape search: template {template!r} is not searchable; valid: {list(SEARCHABLE)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise RankError(f"shape search: budget is a fraction of the dense parameters, > 0, got {budget!r}")
    axes = dict(axes)
    dense = dense.detach()
    if tuple(dense.shape) != tuple(axes.values()):
        raise AdtnError(f"shape search: weight of shape {tuple(dense.shape)} does not match axes {axes}")
    make = _kron_candidates if template == "kronecker" else _tt_candidates
    cands = make(axes, float(budget))
    if candidates is not None:
        keys = [_key(c) for c in candidates]
        cands = [c for c in cands if _key(c.options) in keys]
    if not cands:
        raise RankError(f"shape search: no {template!r} shape fits budget {budget} of {math.prod(axes.values()):,} "
                        "parameters")
    must = [c for c in cands if c.tag]
    rest = sorted((c for c in cands if not c.tag), key=lambda c: (-c.params, c.cost))[: max(0, max_candidates - len(must))]
    pool = must + rest
    norm2 = float(dense.double().pow(2).sum()) or 1.0
    screen = screen if screen is not None else 3 if template == "kronecker" else 8
    for c in cands:
        c.extra["norm2"] = norm2
    for c in pool:  # screen: a one-sketch bound, then the top few and the must-haves properly
        c.estimate = _estimate(template, dense, axes, c, precise=False, sketch=_SKETCH)
    pool.sort(key=lambda c: c.estimate)
    for c in {id(c): c for c in pool[:screen] + must}.values():
        c.estimate = min(c.estimate, _estimate(template, dense, axes, c, precise=False))
    pool.sort(key=lambda c: c.estimate)
    measured = dense.numel() <= _REFINE_NUMEL and get(template).init is not None
    if measured:
        for c in {id(c): c for c in pool[:refine] + must}.values():
            c.error = _measure(template, dense, axes, c)
    pool.sort(key=lambda c: (c.error if c.error is not None else c.estimate))
    best = pool[0]

    def err(c: _Cand) -> float:
        return c.error if c.error is not None else c.estimate

    default = next((c for c in pool if c.tag == "default"), None)
    return ShapeChoice(template, best.options, best.rank, err(best), best.params, best.error is not None,
                       tuple((c.options, err(c)) for c in pool[1:6]), None if default is None else err(default),
                       len(pool), time.perf_counter() - start)


def _key(options: Mapping[str, Any]) -> str:
    if "factors" in options:
        a, b = options["factors"]
        return repr((tuple(dict(a).values()) if isinstance(a, Mapping) else tuple(a),
                     tuple(dict(b).values()) if isinstance(b, Mapping) else tuple(b)))
    out, inn = options["modes"]
    return repr((tuple(out), tuple(inn)))

"""``search``: the shape and rank with the lowest error at a budget, and the ``ShapeChoice`` it returns."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..budget import effective_ranks
from ..errors import AdtnError, RankError, ShapeError, TemplateError
from ..templates import get
from .candidates import Candidate, enumerate_candidates, options_key, searchable
from .spectra import Unfoldings, single_thread

__all__ = ["SEARCHABLE", "ShapeChoice", "search", "searchable"]

SEARCHABLE = tuple(searchable())  # the built-in searchable formats; ``searchable()`` also lists ones registered later
REFINE_NUMEL = 2**18  # finalists are decomposed for real up to this many weight entries
SCREEN_STEPS = 10  # refinement iterations of each finalist; the chosen shape gets the full refinement
SERIAL_NUMEL = 2**20
BIG_NUMEL = 2**22  # above this many entries only MAX_SCREENED candidates are screened
MAX_SCREENED = 48  # the whole search runs on one thread up to this many (see spectra.single_thread)
Apply = Callable[[Tensor, Tensor], Tensor]
SVD_MARK = "(SVD-like)"  # in ``ShapeChoice.summary``; reports (kept as text) find SVD-like choices by it


@dataclass(frozen=True)
class ShapeChoice:
    """The shape ``search`` chose: build options, rank, errors and the runners-up.

    ``error`` is the relative Frobenius error of the weight (measured by decomposing when
    ``measured``, else the singular-value bound); ``output_error`` the relative error of the
    layer's output on the calibration inputs (when given and measured), and ``criterion`` the
    one that ranked the candidates. ``runners_up`` holds (options, error in that criterion) of
    the next best shapes; ``default_error`` the same for the template's default shape (None
    when it does not fit the budget). ``axes`` are the network's axes when the choice pads an
    axis (else None)."""

    template: str
    options: dict[str, Any]
    rank: Any
    error: float
    params: int
    measured: bool
    runners_up: tuple[tuple[dict[str, Any], float], ...] = ()
    default_error: float | None = None
    candidates: int = 0
    seconds: float = 0.0
    axes: dict[str, int] | None = None
    output_error: float | None = None
    criterion: str = "weight"
    tag: str = ""  # "svd" (the truncated-SVD shape), "default", "padded" or ""

    def summary(self) -> str:
        """One line for ``extra_repr`` and reports: the shape, its error, the best runner-up's and
        the default shape's."""
        pad = "" if self.axes is None else " padded " + "x".join(map(str, self.axes.values()))
        crit = "out err" if self.criterion == "output" else "err"
        mine = self.output_error if self.criterion == "output" else self.error
        svd = f" {SVD_MARK}" if self.tag == "svd" else ""
        text = f"{_fmt(self.options)}{pad}{svd} rank={self.rank} {crit}={mine:.4f}"
        if self.runners_up:
            opts, err = self.runners_up[0]
            text += f"; next {_fmt(opts)} {crit}={err:.4f}"
        if self.default_error is not None:
            text += f"; default {crit}={self.default_error:.4f}"
        return text + f"; {self.candidates} candidates"


def _fmt(options: Mapping[str, Any]) -> str:
    if "factors" in options:
        a, b = options["factors"]
        return f"factors={tuple(dict(a).values())}x{tuple(dict(b).values())}"
    if "modes" not in options:  # a format shaped by other options (or by none)
        return " ".join(f"{k}={v}" for k, v in options.items()) or "shape"
    out, inn = options["modes"]
    t = f" t={options['t']}" if options.get("t") else ""
    kernel = f" kernel_with={options['kernel_with']}" if options.get("kernel_with") is not None else ""
    return f"modes={tuple(out)},{tuple(inn)}{t}{kernel}"


# ---------------------------------------------------------------------- errors of one candidate
def _estimate(unf: Unfoldings, c: Candidate, level: str) -> float:
    """The root of the bonds' squared tails over the squared norm (it can pass 1 on a chain or
    tree with many bonds, whose SVD-based decomposition, a chain of orthogonal projections, has
    an error of at most 1: ``ShapeChoice`` reports min(bound, 1))."""
    return math.sqrt(sum(unf.tail2(key, r, level) for key, r in c.bonds) / unf.norm2)


def _approximation(template: str, dense: Tensor, c: Candidate, cov: Any = None, steps: int | None = None) -> Tensor:
    """The weight the template's initialiser gives for this candidate (cropped to ``dense``);
    with a covariance ``cov`` the data-aware one (``adtn.calibration.init``), refined by at most
    ``steps`` iterations (None: the full refinement)."""
    from ..templates.init_common import contract

    padded = _padded(dense, c.axes)
    opts = dict(c.options) | ({"clip": True} if get(template).clip else {})
    if cov is not None:
        from ..calibration.init import calibrated_init, fit_covariance

        axes = dict(zip(c.axes, dense.shape))
        graph, tensors = calibrated_init(template, padded, c.axes, fit_covariance(cov, axes, c.axes), rank=c.rank,
                                         steps=steps,
                                         **opts)
    else:
        graph, tensors = get(template).init(padded, c.axes, rank=c.rank, **opts)
    return contract(graph, tensors)[tuple(slice(0, n) for n in dense.shape)]


def _padded(dense: Tensor, axes: Mapping[str, int]) -> Tensor:
    if tuple(axes.values()) == tuple(dense.shape):
        return dense
    padded = dense.new_zeros(tuple(axes.values()))
    padded[tuple(slice(0, n) for n in dense.shape)] = dense
    return padded


def _whiten(dense: Tensor, axes: Mapping[str, int], cov: Any) -> Tensor:
    """``W L`` (W as out x in-side, ``L`` the Cholesky factor of the damped, padded ``Sigma``): its
    unfoldings' tails bound the output error of an exactly whitened decomposition."""
    from ..calibration import cholesky_factor
    from ..calibration.init import fit_covariance

    padded = _padded(dense, axes)
    cov = fit_covariance(cov, dict(zip(axes, dense.shape)), axes).to(dense.device)
    L = cholesky_factor(cov.matrix, cov.damping)
    out = padded.shape[0]
    return (padded.to(torch.float64).reshape(out, -1) @ L).reshape(padded.shape).to(dense.dtype)


def _apply_for(dense: Tensor, apply: Apply | None) -> Apply:
    if apply is not None:
        return apply
    if dense.dim() != 2:
        raise AdtnError("shape search: inputs= for a conv kernel needs apply=(weight, x) -> output")
    return lambda w, x: F.linear(x, w)


# ---------------------------------------------------------------------- the search
def search(
    template: str,
    dense: Tensor,
    axes: Mapping[str, int],
    budget: float,
    *,
    inputs: Tensor | None = None,
    apply: Apply | None = None,
    covariance: Any = None,
    bias: Tensor | None = None,
    t: int | None = None,
    candidates: Sequence[Mapping[str, Any]] | None = None,
    refine: int = 3,
    pad: bool = True,
) -> ShapeChoice:
    """The shape (``factors=`` / ``modes=``, for semi-tensor templates also ``t=``) and rank with
    the lowest error at ``budget``.

    Every candidate (``adtn.shapes.candidates``) gets a bound from singular values: exact where
    the unfolding is cheap, else a copy-free sketch. The ``refine`` best, the default shape and
    the SVD-like ones get a randomized bound that is tight up to a few percent and, when the
    weight has at most 2**18 entries, are decomposed for real; the lowest measured error wins
    (or the lowest output error on ``inputs`` when given), so ``auto`` is never worse than the
    default shape or than the truncated SVD of (out, in*kh*kw) at the same parameter count:
    every format holds that SVD in one of its shapes (``candidates._svd_like``), except a
    linear ``semi_tr`` at a given t >= 2; ``ht`` holds it plus an R x R root, so at ranks with
    R^2 > out + in*kh*kw the SVD at its parameter count keeps a rank or two more.

    Args:
        template: a searchable format (``searchable()``: one with a ``candidates`` hook).
        dense: the weight, shaped like ``axes`` (out, in[, kh, kw]).
        axes: the weight's axes, name -> size.
        budget: a fraction of the dense parameter count.
        inputs: calibration inputs of the layer: the finalists are ranked by the relative error
            of ``apply(weight, inputs)`` (weights with at most 2**18 entries).
        apply: ``(weight, x) -> output`` of the layer (default ``F.linear`` without bias).
        covariance: instead of ``inputs``, an ``adtn.calibration.Covariance`` of the layer's
            inputs: candidates are screened on the whitened weight ``W L``, the finalists (those
            of the plain screening too) decomposed data-aware and ranked by output error.
        bias: the layer's bias, for the output error reported with ``covariance``.
        t: the semi-tensor factor (semi templates); None tries 2 and 4.
        candidates: restrict the search to these build options.
        refine: how many of the best bounds become finalists besides the default and SVD-like
            (at most 1 on weights too big to decompose here).
        pad: also try zero-padded sizes for badly factorable axes.
    """
    with single_thread(dense.numel() <= SERIAL_NUMEL):
        return _search(template, dense, axes, budget, inputs, apply, t, candidates, refine, pad, covariance, bias)


def _search(template, dense, axes, budget, inputs, apply, t, candidates, refine, pad, cov=None,
            bias=None) -> ShapeChoice:
    start = time.perf_counter()
    if template not in searchable():
        raise TemplateError(f"shape search: template {template!r} is not searchable; valid: {searchable()}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise RankError(f"shape search: budget is a fraction of the dense parameters, > 0, got {budget!r}")
    axes = dict(axes)
    if tuple(dense.shape) != tuple(axes.values()):
        raise AdtnError(f"shape search: weight of shape {tuple(dense.shape)} does not match axes {axes}")
    dense = dense.detach()
    if not torch.isfinite(dense).all():
        raise ShapeError("shape search: the weight contains NaN or inf; no shape can approximate it")
    if dense.dtype not in (torch.float32, torch.float64):
        dense = dense.float()
    run, ref = _calibration(dense, inputs, apply)
    if cov is not None and cov.features * dense.shape[0] != dense.numel():
        raise ShapeError(f"shape search: a calibration covariance over {cov.features} features does not fit the "
                         f"layer (weight {tuple(dense.shape)})")
    cands = enumerate_candidates(template, axes, float(budget), t, pad)
    if candidates is not None:
        keys = {options_key(c) for c in candidates}
        cands = [c for c in cands if options_key(c.options) in keys]
    if not cands:
        out = dense.shape[0]
        raise RankError(f"shape search: no {template!r} shape fits budget {budget} of {dense.numel():,} parameters "
                        f"({budget * dense.numel():,.1f}); even a rank-1 truncated SVD needs "
                        f"{out + dense.numel() // out:,}: raise the budget or keep this layer dense")
    if dense.numel() > BIG_NUMEL and len(cands) > MAX_SCREENED:
        cands = _shortlist(cands, MAX_SCREENED)
    unfoldings: dict[tuple, Unfoldings] = {}

    def unf(c: Candidate, white: bool = cov is not None) -> Unfoldings:
        shape = (tuple(c.axes.values()), white)
        if shape not in unfoldings:
            unfoldings[shape] = Unfoldings(_whiten(dense, c.axes, cov) if white else _padded(dense, c.axes))
        return unfoldings[shape]

    measured = dense.numel() <= REFINE_NUMEL and get(template).init is not None
    plain: list[Candidate] = []
    if cov is not None and measured:  # the plain screening's leaders are finalists too: never worse than it
        _screen(cands, lambda c: unf(c, False))
        plain = sorted(cands, key=lambda c: c.estimate)[:refine]
    _screen(cands, unf)
    cands.sort(key=lambda c: c.estimate)
    must = [c for c in cands if c.tag in ("default", "svd")]
    finalists = list({id(c): c for c in cands[: refine if measured else min(refine, 1)] + must + plain}.values())
    for c in finalists:
        c.estimate = _estimate(unf(c), c, "sketch")
    criterion = "weight"
    if measured:
        def measure(c: Candidate, steps: int | None) -> None:
            approx = _approximation(template, dense, c, cov, steps)
            c.error = float(torch.linalg.vector_norm(approx - dense) / math.sqrt(unf(c, False).norm2))
            if run is not None:
                diff = torch.linalg.vector_norm(run(approx, inputs) - ref)
                c.output = float(diff / torch.linalg.vector_norm(ref).clamp_min(1e-30))
            elif cov is not None:
                c.output = cov.output_error(dense, approx, bias)

        for c in finalists:
            measure(c, SCREEN_STEPS)
        criterion = "output" if inputs is not None or cov is not None else "weight"
        if cov is not None:  # the leader refined in full, as the layer will be: its errors are the layer's
            measure(min(finalists, key=lambda c: (c.output if c.output is not None else c.error, c.params)), None)
    elif get(template).estimated and get(template).init is not None and cov is None:
        _measure_leaders(template, dense, finalists, unf)
    return _choice(template, cands, finalists, criterion, measured, time.perf_counter() - start, axes)


def _calibration(dense: Tensor, inputs: Tensor | None, apply: Apply | None) -> tuple[Apply | None, Tensor | None]:
    """(the layer's apply, its output on ``inputs``) checked before any work, or (None, None)."""
    if inputs is None:
        return None, None
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise ShapeError("shape search: the calibration inputs contain NaN or inf")
    run = _apply_for(dense, apply)
    try:
        return run, run(dense, inputs)
    except (RuntimeError, ValueError) as err:
        raise ShapeError(f"shape search: calibration inputs of shape {tuple(inputs.shape)} do not fit the layer "
                         f"(weight {tuple(dense.shape)}): {err}") from err


def _shortlist(cands: list[Candidate], n: int) -> list[Candidate]:
    """On big weights every screened unfolding costs a pass over the weight: keep the tagged
    shapes (default, SVD-like, padded) and the ``n`` that use most of the budget, fewest bonds
    first among equals (more parameters in fewer bonds is where low errors are)."""
    tagged = [c for c in cands if c.tag]
    rest = sorted((c for c in cands if not c.tag), key=lambda c: (-c.params, len(c.bonds)))
    return tagged + rest[: max(0, n - len(tagged))]


def _measure_leaders(template: str, dense: Tensor, finalists: list[Candidate], unf, rounds: int = 3) -> None:
    """On weights too big to decompose every finalist: the ring's singular-value model is an
    estimate, not a bound, and can be optimistic by far (0.90 against a real 0.98 on a random
    512x512x3x3 kernel). Decompose the leader for real until a measured (or bounded, SVD-like)
    candidate leads, at most ``rounds`` times."""
    for _ in range(rounds):
        leader = min(finalists, key=lambda c: c.error if c.error is not None else c.estimate)
        if leader.error is not None or leader.tag == "svd":
            return
        approx = _approximation(template, dense, leader)
        leader.error = float(torch.linalg.vector_norm(approx - dense) / math.sqrt(unf(leader).norm2))


def _screen(cands: list[Candidate], unf: Callable[[Candidate], Unfoldings]) -> None:
    """Every candidate's cheap bound; unfoldings are visited in the order that lets sketches
    share their first pass over the weight."""
    work = {}
    for c in cands:
        u = unf(c)
        for key, r in c.bonds:
            if not u.exact_ok(key) and r < min(u.sides(key)):
                work[(id(u), key)] = (u, key)
    for u, key in sorted(work.values(), key=lambda uk: (id(uk[0]), uk[0].first_signature(uk[1]))):
        u.screen(key)
    for c in cands:
        c.estimate = _estimate(unf(c), c, "screen")


def _choice(template: str, cands: list[Candidate], finalists: list[Candidate], criterion: str, measured: bool,
            seconds: float, axes: dict[str, int]) -> ShapeChoice:

    def score(c: Candidate) -> float:
        if criterion == "output" and c.output is not None:
            return c.output
        return c.error if c.error is not None else c.estimate

    def shown(c: Candidate) -> float:
        return score(c) if c.error is not None or c.output is not None else min(c.estimate, 1.0)

    def rank(c: Candidate) -> tuple[float, int]:  # equal errors (to 1e-6): the fewer parameters
        return round(score(c), 6), c.params

    finals = sorted(finalists, key=rank)
    rest = sorted((c for c in cands if c not in finalists), key=rank)
    ranked = finals + ([] if criterion == "output" else rest)
    best = ranked[0]
    if get(template).clip:  # report the ranks the network has, not the topped-up caps
        best.rank = effective_ranks(get(template), best.axes, {**best.options, "rank": best.rank, "clip": True})["rank"]
    default = next((c for c in finalists if c.tag == "default"), None)

    def described(c: Candidate) -> dict[str, Any]:
        return dict(c.options) | ({"axes": dict(c.axes)} if c.axes != axes else {})

    return ShapeChoice(template, dict(best.options), best.rank,
                       best.error if best.error is not None else min(best.estimate, 1.0),
                       best.params, best.error is not None, tuple((described(c), shown(c)) for c in ranked[1:6]),
                       None if default is None else shown(default), len(cands), seconds,
                       None if best.axes == axes else dict(best.axes), best.output, criterion, best.tag)

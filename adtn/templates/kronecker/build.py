"""GKPD as a graph: a sum of R same-order Kronecker products, W = sum_r A_r (x) B_r.

Generalized Kronecker product decomposition (Hameed et al., AAAI 2022).
Every axis k of size n_k = a_k * b_k is split between the two factors, and per mode
(A (x) B)[i * b_k + j] = A[i] * B[j]. As a graph:

- node ``a`` with legs ``(r: R, <axis>: a_k for every axis)``, i.e. A stacked as (R, a_1..a_d);
- node ``b`` with legs ``(r: R, <axis>: b_k ...)``, B stacked as (R, b_1..b_d);
- bond ``a.r -- b.r`` sums over the R terms;
- output axis k fuses ``[a.<k>, b.<k>]`` row-major, so its index is i * b_k + j: exactly the
  Kronecker index. No Kronecker product is ever formed.

Parameters R (prod a + prod b); R <= min(prod a, prod b) (beyond that the sum is exact already).
The node layouts match ``adtn.decompose.kronecker_svd`` (A (R, *a_shape), B (R, *b_shape)).
Default split (``default_factors``): a conv kernel (F, C, kh, kw) takes A (F, 1, kh, 1) and
B (1, C, 1, kw), i.e. W[f, c, i, j] = sum_r A_r[f, i] B_r[c, j]. GKPD leaves the split free;
this one beat the split (F/4, C/4, kh, 1) x (4, 4, 1, kw) we used first on every kernel we
measured (trained 64x64x3x3 at half the parameters: relative error 0.535 against 0.622,
benchmarks/repro_gkpd.py), and its fast form runs in about half a dense conv's time where
that split's needs more FLOPs than the dense conv (benchmarks/layers.py). Any other weight
splits every axis n as (n / d, d) with d the largest divisor of n not above sqrt(n).
``shape="auto"`` (the default under ``budget=``) searches every split instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ...errors import ShapeError, TemplateError
from ...graph import TensorGraph
from ..factor import check_rank
from ..tucker.build import check_axes, per_axis, positive_int

__all__ = ["default_factors", "kronecker", "kronecker_params"]

Shape = Sequence[int] | Mapping[str, int]
CONV_AXES = ("out", "in", "kh", "kw")


def _largest_divisor(n: int, limit: float) -> int:
    return max(d for d in range(1, max(1, int(limit)) + 1) if n % d == 0)


def default_factors(axes: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """The default (a_shape, b_shape): a conv kernel's (F, 1, kh, 1) x (1, C, 1, kw), else a
    balanced split per axis (see the module docstring)."""
    sizes = check_axes(axes, "kronecker")
    if tuple(sizes) == CONV_AXES:
        b = {"out": 1, "in": sizes["in"], "kh": 1, "kw": sizes["kw"]}
    else:
        b = {ax: _largest_divisor(n, math.isqrt(n)) for ax, n in sizes.items()}
    return {ax: sizes[ax] // b[ax] for ax in sizes}, b


def _kron_spec(
    axes: Mapping[str, int], rank: int, factors: tuple[Shape | None, Shape | None] | None, clip: bool = False
) -> tuple[dict[str, int], dict[str, int], dict[str, int], int]:
    sizes = check_axes(axes, "kronecker")
    if "r" in sizes:
        raise TemplateError(f"kronecker: axis name 'r' is reserved for the rank leg, got axes {list(sizes)}")
    if factors is None:
        a, b = default_factors(sizes)
    else:
        if not isinstance(factors, Sequence) or isinstance(factors, str) or len(factors) != 2:
            raise ShapeError(f"kronecker: factors must be a pair (a_shape, b_shape), got {factors!r}")
        if factors[0] is None and factors[1] is None:
            raise ShapeError("kronecker: factors needs a_shape or b_shape, got (None, None)")
        given = [None if f is None else per_axis(f, list(sizes), f"kronecker: {side}", ShapeError)
                 for f, side in zip(factors, ("a_shape", "b_shape"))]
        for f, side in zip(given, ("a_shape", "b_shape")):
            for ax, s in (f or {}).items():
                positive_int(s, f"kronecker: {side} size for axis {ax!r}", ShapeError)
        a, b = given
        if a is None or b is None:
            known, side = (b, "b_shape") if a is None else (a, "a_shape")
            for ax, n in sizes.items():
                if n % known[ax]:
                    raise ShapeError(
                        f"kronecker: axis {ax!r}: {side} size {known[ax]} does not divide the axis size {n}"
                    )
            derived = {ax: n // known[ax] for ax, n in sizes.items()}
            a, b = (derived, b) if a is None else (a, derived)
    for ax, n in sizes.items():
        if a[ax] * b[ax] != n:
            raise ShapeError(
                f"kronecker: axis {ax!r}: a_k * b_k must equal the axis size, got {a[ax]} * {b[ax]} = "
                f"{a[ax] * b[ax]}, size {n}"
            )
    rank = positive_int(rank, "kronecker: rank")
    pa, pb = math.prod(a.values()), math.prod(b.values())
    if clip:
        rank = min(rank, pa, pb)
    check_rank("a.r -- b.r", rank, min(pa, pb), f"min(prod a, prod b) = min({pa}, {pb})")
    return sizes, a, b, rank


def kronecker_params(
    axes: Mapping[str, int], *, rank: int, factors: tuple[Shape | None, Shape | None] | None = None,
    clip: bool = False,
) -> int:
    """Closed-form parameter count: R * (prod a + prod b)."""
    _, a, b, rank = _kron_spec(axes, rank, factors, clip)
    return rank * (math.prod(a.values()) + math.prod(b.values()))


def kronecker(
    axes: Mapping[str, int], *, rank: int, factors: tuple[Shape | None, Shape | None] | None = None,
    clip: bool = False,
) -> TensorGraph:
    """Sum of R generalized Kronecker products A_r (x) B_r (GKPD).

    Args:
        axes: the weight's axes, name -> size.
        rank: R, the number of Kronecker terms; at most min(prod a, prod b).
        factors: ``(a_shape, b_shape)``, each one size per axis (sequence in axis order or dict
            by axis); one of them may be None and is then derived. Default: ``default_factors``.
        clip: lower a rank above min(prod a, prod b) to that instead of raising RankError.

    Returns:
        A frozen graph ``a -- b`` (bond r) whose output axis k fuses ``[a.<k>, b.<k>]``.
    """
    sizes, a, b, rank = _kron_spec(axes, rank, factors, clip)
    g = TensorGraph("kronecker")
    g.add_node("a", {"r": rank, **a})
    g.add_node("b", {"r": rank, **b})
    g.bond("a.r", "b.r")
    return g.set_outputs({ax: [f"a.{ax}", f"b.{ax}"] for ax in sizes}).freeze()

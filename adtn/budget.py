"""Sizes that fill a parameter budget: the promise is a count <= budget and >= 90% of it.

A template's closed-form ``formula`` gives the count of any size without building anything,
so the search is pure arithmetic:

1. the largest uniform rank (or depth) that fits, by doubling then bisection (``knob_for_budget``);
2. for templates that take one rank per bond (or per axis), single bonds are raised one step
   at a time while the count still fits (``fill_ranks``): uniform ranks can leave up to half
   the budget unused on small layers;
3. when the template's default shape still falls short, ``resolve`` tries other shapes (the
   number of modes ``d``, or the format's ``alternatives``, e.g. Kronecker factor splits) and keeps the
   first that reaches 90%. Where no size of the template lands in [90%, 100%] of the budget
   (a rank-1 network already above 90% and below 100% is the usual reason), the largest count
   that fits is used and a warning says how much of the budget it takes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from .errors import AdtnError, RankError
from .templates import Template

__all__ = ["FILL", "count", "effective_ranks", "fill_ranks", "knob_for_budget"]

FILL = 0.9  # the smallest share of the budget a size should use
MAX_SIZE = 2**24  # search bound of the rank (or depth) that fits a budget
_PLATEAU = 4  # doublings without a change in count before a rank is taken as clipped


def count(t: Template, axes: Mapping[str, int], kwargs: Mapping[str, Any], **size: Any) -> int | None:
    """The template's parameter count with ``kwargs`` and ``size``, or None if that size is invalid."""
    try:
        return t.formula(axes, **{**kwargs, **size})
    except (AdtnError, TypeError, ValueError):
        return None


def knob_for_budget(where: str, t: Template, axes: Mapping[str, int], knob: str, kwargs: Mapping[str, Any],
                    budget: float, dense: int) -> int:
    """The smallest ``knob`` (rank or depth) reaching the largest count that is at most budget * dense.

    Raises RankError when even the smallest valid size does not fit."""
    target = budget * dense

    def at(r: int) -> int | None:
        return count(t, axes, kwargs, **{knob: r})

    # the smallest valid size: without clipping, ranks of semi-tensor templates must divide by t
    step = next((r for r in range(1, 65) if at(r) is not None), None)
    first = at(step) if step is not None else None
    if first is None:
        try:
            t.formula(axes, **{**kwargs, knob: 1})
        except AdtnError as err:
            raise RankError(f"{where}: no {knob} of {t.name!r} is valid for axes {dict(axes)}: {err}") from err
    if first is None or first > target:
        raise RankError(
            f"{where}: budget {budget} ({target:,.0f} of {dense:,} parameters) is below the smallest "
            f"{t.name!r} ({knob}={step or 1}: {first if first is not None else 'invalid'} parameters)"
        )

    def fits(k: int) -> int | None:
        p = at(k * step)
        return p if p is not None and p <= target else None

    lo, hi, p_lo = 1, None, first
    while lo * step < MAX_SIZE:
        p = fits(2 * lo)
        if p is None:
            hi = 2 * lo
            break
        if p == p_lo and all(fits(2**j * lo) == p_lo for j in range(2, _PLATEAU + 1)):
            break  # clipped ranks: larger values change nothing (rounded ones may plateau briefly)
        lo, p_lo = 2 * lo, p
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        p = fits(mid)
        if p is None:
            hi = mid
        else:
            lo, p_lo = mid, p
    small, big = 1, lo  # the smallest value giving the same count (clipped or rounded ranks plateau)
    while small < big:
        mid = (small + big) // 2
        if at(mid * step) == p_lo:
            big = mid
        else:
            small = mid + 1
    return small * step


def _per_bond(t: Template, axes: Mapping[str, int], kwargs: Mapping[str, Any], rank: int) -> list[int] | None:
    """``rank`` repeated once per bond, when the template takes one rank per bond (or per axis)."""
    base = count(t, axes, kwargs, rank=rank)
    return next(([rank] * n for n in range(1, 16) if count(t, axes, kwargs, rank=[rank] * n) == base), None)


def _greedy(t: Template, axes: Mapping[str, int], kwargs: Mapping[str, Any], ranks: list[int], steps: tuple[int, ...],
            target: float) -> tuple[int, list[int]]:
    """Raise one bond at a time (the move with the largest count that still fits first)."""
    current = count(t, axes, kwargs, rank=ranks) or 0
    while current < FILL * target:
        best = None
        for k, step in itertools.product(range(len(ranks)), steps):
            trial = ranks[:k] + [ranks[k] + step] + ranks[k + 1:]
            p = count(t, axes, kwargs, rank=trial)
            if p is not None and current < p <= target and (best is None or p > best[0]):
                best = (p, trial)
        if best is None:
            break
        current, ranks = best
    return current, ranks


def fill_ranks(t: Template, axes: Mapping[str, int], kwargs: Mapping[str, Any], target: float) -> Any:
    """Top up the uniform ``kwargs["rank"]`` bond by bond towards ``target`` parameters.

    Starts from the uniform rank and from the one below it (whose slack the greedy top-up
    can spread better), and keeps the larger count; the uniform rank is returned unchanged
    when it already reaches 90% or the template takes a single rank."""
    rank = kwargs["rank"]
    base = count(t, axes, kwargs, rank=rank)
    if base is None or base >= FILL * target:
        return rank
    smallest = next((r for r in range(1, 65) if count(t, axes, kwargs, rank=r) is not None), 1)
    steps = tuple(sorted({1, smallest, int(kwargs.get("t", 1))}))  # semi-tensor bonds move in steps of t
    best = (base, rank)
    for start in {rank, max(smallest, rank - smallest)}:
        ranks = _per_bond(t, axes, kwargs, start)
        if ranks is None:
            return rank
        p, filled = _greedy(t, axes, kwargs, ranks, steps, target)
        if p > best[0]:
            best = (p, filled)
    return best[1]


def effective_ranks(t: Template, axes: Mapping[str, int], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with a per-bond rank list lowered, entry by entry, to the ranks the network gets
    under ``clip`` (the same graph): the budget search tops up uniform ranks, so a bond that
    cannot use its share (a 3x3 kernel's) would otherwise be reported at a rank it does not have."""
    rank = kwargs.get("rank")
    if not kwargs.get("clip") or not isinstance(rank, (list, tuple)):
        return dict(kwargs)

    def structure(ranks: list[int]) -> str | None:
        try:
            return t.build(axes, **{**kwargs, "rank": type(rank)(ranks)}).structure_hash()
        except AdtnError:
            return None

    ranks = list(rank)
    want = structure(ranks)
    for k in range(len(ranks)):
        lo, hi = 1, ranks[k]  # the smallest entry giving the same graph (the graph is fixed above it)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if structure(ranks[:k] + [mid] + ranks[k + 1:]) == want else (mid + 1, hi)
        ranks[k] = lo
    return {**kwargs, "rank": type(rank)(ranks)}

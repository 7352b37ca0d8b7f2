"""Mode factorization and rank checks shared by the templates.

A template tensorizes a weight axis of size n into d modes whose product is n (a 4096 axis
as 8 x 8 x 8 x 8). ``factorize`` picks balanced modes, ``check_modes`` validates a user's,
``default_modes`` picks d for a weight; ``ranks_list``, ``check_rank`` and ``enforce_ranks``
validate bond ranks. Mode tuples are always in descending order (largest first, 1s last).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from ..errors import RankError, ShapeError

__all__ = [
    "check_modes",
    "check_rank",
    "default_modes",
    "enforce_ranks",
    "factorize",
    "ranks_list",
    "resolve_modes",
    "weight_axes",
]

Bound = tuple[int, str]  # (largest useful rank, why)


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def divisors(n: int) -> list[int]:
    small, large = [], []
    f = 1
    while f * f <= n:
        if n % f == 0:
            small.append(f)
            if f * f != n:
                large.append(n // f)
        f += 1
    return small + large[::-1]


@lru_cache(maxsize=4096)
def _balanced(n: int, d: int, cap: int) -> tuple[int, ...] | None:
    """Descending d factors of n, each <= cap, with the smallest possible largest factor
    (then recursively the same for the rest); None when no such factors exist."""
    if d == 1:
        return (n,) if n <= cap else None
    low = 1
    while low**d < n:
        low += 1
    for f in divisors(n):
        if f < low or f > cap:
            continue
        rest = _balanced(n // f, d - 1, f)
        if rest is not None:
            return (f,) + rest
    return None


def factorize(n: int, d: int) -> tuple[int, ...]:
    """Split n into d factors, as balanced as possible, in descending order.

    "Balanced" means the largest factor is as small as it can be, then the next, and so on:
    ``factorize(4096, 4) == (8, 8, 8, 8)``, ``factorize(784, 3) == (14, 8, 7)``. A prime
    gives ``(n, 1, ..., 1)``.
    """
    if not is_int(n) or n < 1:
        raise ShapeError(f"factorize: n must be a positive integer, got {n!r}")
    if not is_int(d) or d < 1:
        raise ShapeError(f"factorize: the number of factors d must be a positive integer, got {d!r}")
    out = _balanced(int(n), int(d), int(n))
    assert out is not None  # (n, 1, ..., 1) always fits
    return out


def divisible_modes(n: int, d: int, t: int, k: int, slack: float = 0.125) -> tuple[int, tuple[int, ...]]:
    """(size, d modes) whose first k modes divide by t: the most balanced over sizes from n up
    to n * (1 + slack), multiples of t^k (a padded size when n itself is not one).

    The semi-tensor templates need it: I_t takes over a factor t of the in mode of every core
    on the left of a semi-tensor bond. The t-multiples go to the smallest balanced factors."""
    step = t**k
    best = None
    for size in range(-(-n // step) * step, max(n + step, math.ceil(n * (1 + slack))) + 1, step):
        rest = sorted(factorize(size // step, d))  # ascending: the smallest get the factor t
        modes = tuple(sorted((g * t for g in rest[:k]), reverse=True)) + tuple(sorted(rest[k:], reverse=True))
        if best is None or max(modes) < max(best[1]):
            best = (size, modes)
    assert best is not None
    return best


def check_modes(axis: str, size: int, modes: Sequence[int]) -> tuple[int, ...]:
    """Check that ``modes`` are positive integers multiplying to ``size``; return them as a tuple."""
    if isinstance(modes, (str, bytes)) or not isinstance(modes, Sequence) or not modes:
        raise ShapeError(f"axis {axis!r}: modes must be a non-empty sequence of positive integers, got {modes!r}")
    if any(not is_int(m) or m < 1 for m in modes):
        raise ShapeError(f"axis {axis!r}: modes must be positive integers, got {tuple(modes)!r}")
    modes = tuple(int(m) for m in modes)
    prod = math.prod(modes)
    if prod != size:
        raise ShapeError(
            f"axis {axis!r}: modes {modes} multiply to {prod}, but the axis has size {size}; "
            f"try {factorize(size, len(modes))}"
        )
    return modes


def weight_axes(axes: Mapping[str, int], where: str) -> tuple[str, str, tuple[str, ...]]:
    """Names of (out axis, in axis, spatial axes) of a weight: 2 axes = linear, more = conv.

    The first axis is the output one, the second the input one (``nn.Linear.weight`` and
    ``nn.Conv2d.weight`` layouts), the rest (``kh``, ``kw``) are kept whole.
    """
    if not isinstance(axes, Mapping) or len(axes) < 2:
        raise ShapeError(
            f"{where}: axes must be an ordered mapping with at least 2 axes, e.g. {{'out': 64, 'in': 32}}, "
            f"got {axes!r}"
        )
    for name, size in axes.items():
        if not is_int(size) or size < 1:
            raise ShapeError(f"{where}: axis {name!r} must have a positive integer size, got {size!r}")
    names = list(axes)
    return names[0], names[1], tuple(names[2:])


def _default_d(size: int) -> int:
    # modes of about 8: each between ~6 and ~20 when the size allows it
    return max(1, round(math.log2(size) / 3)) if size > 1 else 1


def default_modes(axes: Mapping[str, int], d: int | None = None) -> dict[str, tuple[int, ...]]:
    """Balanced modes for the out and in axes of a weight, of equal length (1s pad the shorter).

    With ``d`` None, d is chosen so that modes are about 8 (4096 -> (8, 8, 8, 8),
    784 -> (14, 8, 7), 10 -> (10,)), the larger of the two axes' choices.
    """
    out, inn, _ = weight_axes(axes, "default_modes")
    if d is None:
        d = max(_default_d(axes[out]), _default_d(axes[inn]))
    return {out: factorize(axes[out], d), inn: factorize(axes[inn], d)}


def resolve_modes(
    axes: Mapping[str, int],
    modes: Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None = None,
    d: int | None = None,
    where: str = "modes",
) -> dict[str, tuple[int, ...]]:
    """The out and in modes of a weight: given as ``(out_modes, in_modes)`` or a dict by axis
    name, checked against the sizes; balanced (``default_modes``) when None."""
    out, inn, _ = weight_axes(axes, where)
    if modes is None:
        return default_modes(axes, d)
    if isinstance(modes, Mapping):
        unknown = sorted(set(modes) - {out, inn})
        if unknown or len(modes) != 2:
            raise ShapeError(f"{where}: modes must name the axes {out!r} and {inn!r}, got keys {sorted(modes)}")
        pair = (modes[out], modes[inn])
    elif isinstance(modes, Sequence) and len(modes) == 2 and not isinstance(modes, str):
        pair = tuple(modes)
    else:
        raise ShapeError(f"{where}: modes must be a pair (out_modes, in_modes), got {modes!r}")
    got = {out: check_modes(out, axes[out], pair[0]), inn: check_modes(inn, axes[inn], pair[1])}
    if len(got[out]) != len(got[inn]):
        raise ShapeError(
            f"{where}: out modes {got[out]} and in modes {got[inn]} must have the same length "
            "(one pair per core); pad with 1s"
        )
    if d is not None and len(got[out]) != d:
        raise ShapeError(f"{where}: d={d} but the modes give {len(got[out])} cores; pass one of the two")
    return got


def ranks_list(rank: int | Sequence[int], n_bonds: int, name: str) -> list[int]:
    """An int (the same rank on every bond) or one rank per bond, as a list of positive ints."""
    if is_int(rank):
        ranks = [int(rank)] * n_bonds
        if rank < 1:
            raise RankError(f"{name}: rank must be a positive integer, got {rank}")
        return ranks
    if isinstance(rank, (str, bytes)) or not isinstance(rank, Sequence):
        raise RankError(f"{name}: rank must be an int or a sequence of {n_bonds} ints, got {rank!r}")
    if len(rank) != n_bonds:
        raise RankError(f"{name}: expected {n_bonds} ranks (one per bond), got {len(rank)}: {tuple(rank)!r}")
    for k, r in enumerate(rank):
        if not is_int(r) or r < 1:
            raise RankError(f"{name}: rank {k} must be a positive integer, got {r!r}")
    return [int(r) for r in rank]


def check_rank(bond: str, rank: int, max_useful: int, why: str = "product of the modes on one side") -> None:
    """Raise RankError when ``rank`` exceeds the largest rank the bond can use."""
    if rank > max_useful:
        raise RankError(f"rank {rank} for bond {bond} is larger than useful: at most {max_useful} ({why})")


def enforce_ranks(
    bonds: Sequence[str],
    ranks: Sequence[int],
    bounds: Callable[[list[int]], list[list[Bound]]],
    clip: bool = False,
) -> list[int]:
    """Check ranks against ``bounds(ranks)`` (per bond: (max, why) pairs), or clip them to it.

    Clipping repeats until every bound holds (bounds may depend on neighbouring ranks).
    """
    ranks = list(ranks)
    if not clip:
        for bond, r, limits in zip(bonds, ranks, bounds(ranks)):
            for limit, why in limits:
                check_rank(bond, r, limit, why)
        return ranks
    changed = True
    while changed:
        changed = False
        for k, limits in enumerate(bounds(ranks)):
            cap = min((limit for limit, _ in limits), default=ranks[k])
            if ranks[k] > cap:
                ranks[k], changed = cap, True
    return ranks

"""Kronecker's budget alternatives: other factor splits when the default one cannot fill a budget."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

from ..factor import divisors

__all__ = ["kronecker_splits"]


def kronecker_splits(axes: Mapping[str, int], target: float, fill: float) -> Iterator[dict[str, Any]]:
    """Kronecker factor splits (a, b): those whose rank R * (|a| + |b|) fills ``target`` to ``fill``,
    most balanced axis by axis first (a lopsided split such as (1, 112) x (256, 7) fills a budget exactly but
    is a poor fixed rule: 0.58 accuracy against 0.93 for a balanced one in the demo's 1% sweep),
    then the others by how fully they fill it."""
    names = list(axes)
    scored = []
    for a in itertools.product(*[divisors(axes[ax]) for ax in names]):
        b = tuple(axes[ax] // x for ax, x in zip(names, a))
        pa, pb = math.prod(a), math.prod(b)
        if a > b or pa == 1 or pb == 1:  # (a, b) and (b, a) cost the same; |a| = 1 is not a factorization
            continue
        rank = min(int(target // (pa + pb)), pa, pb)
        if rank >= 1:
            fills = rank * (pa + pb) >= fill * target
            balance = sum(abs(math.log(x / y)) for x, y in zip(a, b))  # per axis: no factor takes a whole axis
            scored.append((not fills, balance if fills else 0.0, -rank * (pa + pb), balance, a, b))
    for *_, a, b in sorted(scored):
        yield {"factors": (dict(zip(names, a)), dict(zip(names, b)))}

"""Global budget allocation: give parameters where they remove the most output error.

With calibration, the singular values ``s_i`` of a layer's whitened weight ``W L`` are its
output error per removed rank: keeping rank ``r`` leaves the relative squared output error
``e(r) = sum_{i>r} s_i^2 / sum_i s_i^2`` (exact for the truncated SVD; a sensitivity proxy for
the other formats, whose count at rank ``r`` of that SVD is ``r (out + n)``). ``grow`` starts
every layer at its smallest size and repeatedly takes the one next size step with the largest
drop of ``e`` per added parameter (a greedy knapsack over the layers' size ladders) while the
total stays within the budget, so layers get different fractions of their weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .covariance import Covariance
from .whitening import cholesky_factor

__all__ = ["ALLOCATIONS", "Proxy", "grow"]

ALLOCATIONS = ("uniform", "global")


class Proxy:
    """A layer's relative squared output error as a function of its parameter count."""

    def __init__(self, weight: Tensor, cov: Covariance) -> None:
        w = weight.detach().to(cov.sigma.device, torch.float64)
        out, n = w.shape[0], cov.features
        rows = w.reshape(cov.groups, out // cov.groups, n)
        s2 = torch.cat([torch.linalg.svdvals(r @ cholesky_factor(s, cov.damping)) for r, s in
                        zip(rows, cov.sigma)]).pow(2).sort(descending=True).values
        total = float(s2.sum())
        self.tail = [1.0] + [max(0.0, 1.0 - float(c) / total) if total > 0 else 0.0 for c in s2.cumsum(0)]
        self.per_rank = out + n * cov.groups

    def __call__(self, params: float) -> float:
        r = params / self.per_rank
        lo = min(math.floor(r), len(self.tail) - 1)
        hi = min(lo + 1, len(self.tail) - 1)
        frac = min(1.0, r - lo)
        return self.tail[lo] * (1 - frac) + self.tail[hi] * frac


def grow(jobs: Sequence[Any], target: float, proxies: Sequence[Callable[[float], float]],
         tolerance: float = 0.1) -> None:
    """Raise the jobs' sizes (``job.value`` on ``job.ladder``) one step at a time, each time the
    step with the largest error drop per parameter that keeps the total within ``target``; when
    none fits, one last step may pass ``target`` by up to ``tolerance`` if that lands closer to it
    (as the uniform allocation's fill does)."""
    total = sum(j.params for j in jobs)
    nxt = [j.ladder.up(j.value) for j in jobs]
    last = False
    while True:
        best, pick = -math.inf, None
        limit = target * (1 + tolerance) if last else target
        for k, (j, v) in enumerate(zip(jobs, nxt)):
            if v is None:
                continue
            now, then = j.params, j.ladder.count(v)
            if then > getattr(j, "cap", 1.0) * j.dense:  # no layer grows past its cap (compress' min_gain)
                continue
            new = total - now + then
            if new > limit or (last and new - target >= target - total):
                continue
            gain = (proxies[k](now) - proxies[k](then)) / max(1, then - now)
            if gain > best:
                best, pick = gain, k
        if pick is None:
            if last:
                return
            last = True
            continue
        j = jobs[pick]
        total += j.ladder.count(nxt[pick]) - j.params
        j.value = nxt[pick]
        nxt[pick] = j.ladder.up(j.value)
        if last:
            return

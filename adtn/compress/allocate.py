"""Budget allocation of ``compress``: each layer's share, the sizes within it, the filling of what is left."""

from __future__ import annotations

from collections.abc import Mapping

from ..calibration.allocation import Proxy, grow
from ..errors import RankError
from .choice import choose, prepare
from .sizes import TOLERANCE, Job

__all__ = ["allocate", "budgeted", "fill", "shares"]


def shares(jobs: list[Job], target: float, floor: Mapping[int, int]) -> tuple[float, set[int]]:
    """(the fraction each layer gets, the ids of layers whose smallest size ``floor`` is above it)."""
    tight: set[int] = set()
    while True:  # layers whose smallest size is above their share take it; the rest share what is left
        rest = [j for j in jobs if id(j) not in tight]
        left = target - sum(floor[id(j)] for j in jobs if id(j) in tight)
        share = left / sum(j.dense for j in rest) if rest else 0.0
        more = {id(j) for j in rest if share <= 0 or floor[id(j)] > share * j.dense}
        if not more:
            return share, tight
        tight |= more


def allocate(jobs: list[Job], target: float, proxies: list | None = None) -> set[int]:
    """Set each flexible job's size so that their parameters total about ``target`` (see the module
    doc); returns the ids of the layers whose smallest size is above their share. With
    ``proxies`` (global allocation) every layer starts at its smallest size and grows where the
    output error falls most per parameter (``adtn.calibration.allocation``)."""
    floor = {id(j): j.ladder.count(j.ladder.step) for j in jobs}
    share, tight = shares(jobs, target, floor)
    for j in jobs:
        v = None if id(j) in tight or proxies is not None else j.ladder.within(min(share, j.cap) * j.dense)
        j.value = j.ladder.step if v is None else v
    total = sum(j.params for j in jobs)
    if total > target * (1 + TOLERANCE):
        layers = ", ".join(f"{j.name!r} ({j.chosen}: >= {floor[id(j)]:,} of {j.dense:,})" for j in jobs
                           if id(j) in tight)
        raise RankError(f"compress: the budget ({target:,.0f} parameters) is below what the layers can get to: the "
                        f"smallest sizes total {total:,}; too big: {layers}; raise budget= or skip= those layers")
    if proxies is not None:
        grow(jobs, target, proxies)
        return set()
    fill(jobs, target)
    return tight


def fill(jobs: list[Job], target: float) -> None:
    """Grow the layers furthest below their share one size step at a time while the total stays
    within ``target``; one last step may overshoot it by up to 10%."""
    total = sum(j.params for j in jobs)
    high = target * (1 + TOLERANCE)
    nxt = {id(j): j.ladder.up(j.value) for j in jobs}
    while total < target:
        steps = []
        for j in jobs:
            v = nxt[id(j)]
            if v is not None and j.ladder.count(v) <= j.cap * j.dense:
                new = total - j.params + j.ladder.count(v)
                if new <= high:
                    steps.append((new, j.params / j.dense, j, v))
        if not steps:
            return
        under = [s for s in steps if s[0] <= target]
        new, _, j, v = min(under, key=lambda s: s[1]) if under else min(steps, key=lambda s: abs(s[0] - target))
        j.value, total = v, new
        nxt[id(j)] = j.ladder.up(v)
        if not under:
            return


def budgeted(jobs: list[Job], target: float, allocation: str = "uniform") -> None:
    """Choose the templates of the layers without given sizes and size them to share ``target``.

    Candidates are first compared at each layer's share of the budget; after allocation, a layer
    with several candidates compares them again at the parameters it was given (the chosen
    template's own size is among them, so its error can only fall), then the sizes are refilled.
    ``allocation="global"`` sizes the layers by their whitened spectra (needs every layer's
    calibration covariance) instead of giving each the same fraction.
    """
    for j in jobs:
        if not j.ladders:
            prepare(j)
    floor = {id(j): min(lad.count(lad.step) for lad in j.ladders.values()) for j in jobs}
    share, _ = shares(jobs, target, floor)
    for j in jobs:
        choose(j, share)
    proxies = [Proxy(j.module.weight, j.calib) for j in jobs] if allocation == "global" else None
    tight = allocate(jobs, target, proxies)
    several = [j for j in jobs if len(j.ladders) > 1]
    for j in several:
        given = j.params
        j.tried = {}
        choose(j, given / j.dense)
        j.value = j.ladder.within(given) or j.ladder.step
    if several:
        grow(jobs, target, proxies) if proxies is not None else fill(jobs, target)
    for j in jobs:
        if id(j) in tight and j.value == j.ladder.step:
            j.note = (f"its smallest {j.chosen!r} size ({j.params:,} parameters, {j.params / j.dense:.1%}) is above "
                      "its share of the budget")

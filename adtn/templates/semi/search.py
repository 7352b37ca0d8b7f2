"""The shape search's hooks of ``semi_tt`` and ``semi_tr``: mode sets at t in ``SEMI_T``, and SVD-like shapes.

- ``semi_tt``: modes ((O, 1), (t, C / t)), rank t R: the out core is A of the semi-tensor bond
  and stores R columns, B's rows (R, t) are a general R x (C kh kw) matrix;
- ``semi_tr`` on a conv kernel: the same modes with the spatial core last in the ring, ranks
  [1, t R, kh kw] (+ kh kw squared entries). A linear ``semi_tr`` at t >= 2 cannot hold it.
  Wherever no t >= 2 shape fits, and always for ``semi_tr``, the chain or ring at t = 1 joins
  when t is the search's to choose (at t = 1 they are ``tt`` and ``tr``).
"""

from __future__ import annotations

import math
from typing import Any

from ..factor import weight_axes

__all__ = ["SEMI_T", "semi_svd_shapes", "semi_tr_candidates", "semi_tt_candidates"]

SEMI_T = (2, 4)  # t tried by the semi-tensor formats when the caller gives none


def semi_svd_shapes(axes: dict[str, int], ts: tuple[Any, ...], ring: bool) -> tuple[list, list]:
    """(build options, R -> rank) of the truncated-SVD shapes at each t in ``ts``, and the t = 1
    fallback when t is the search's to choose."""
    out, inn, spatial = weight_axes(axes, "shape search")
    o, i = axes[out], axes[inn]
    merge = {"kernel_with": 1} if spatial else {}
    kernel = math.prod(axes[ax] for ax in spatial)
    found: list[tuple[dict, Any]] = []
    for t in ts:
        if t is None or t == 1 or i % t:
            continue
        modes = ((o, 1), (t, i // t))
        if not ring:
            found.append(({"modes": modes, "t": t, **merge}, lambda r, t=t: t * r))
        elif spatial:  # the spatial core last in the ring: + kernel**2 entries
            found.append(({"modes": modes, "t": t}, lambda r, t=t: [1, t * r, kernel]))
    plain_rank = (lambda r: [r, 1]) if ring else (lambda r: r)
    plain = ({"modes": ((o, 1), (1, i)), "t": 1, **merge}, plain_rank)
    return found, [plain] if ts == SEMI_T or 1 in ts else []


def semi_tt_candidates(ctx: Any) -> list:
    return ctx.chains(lambda axes, ts: semi_svd_shapes(axes, ts, False), t_values=SEMI_T)


def semi_tr_candidates(ctx: Any) -> list:
    return ctx.chains(lambda axes, ts: semi_svd_shapes(axes, ts, True), ring=True, t_values=SEMI_T,
                      fallback_always=True)

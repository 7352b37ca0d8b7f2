"""The shape search's hooks of ``tt`` and ``tr``: every mode set, and the truncated SVD as a two-core chain.

The SVD-like shape: modes ((O, 1), (1, C)), conv kernels on the in core (``kernel_with=1``);
``tr`` has ranks [R, 1] (a ring whose closing bond is 1 is a chain).
"""

from __future__ import annotations

from typing import Any

from ..factor import weight_axes

__all__ = ["svd_modes", "tr_candidates", "tt_candidates"]


def svd_modes(axes: dict[str, int]) -> dict[str, Any]:
    """The build options of the (out | in*kh*kw) truncated SVD as a chain: modes ((O, 1), (1, C)),
    a conv kernel on the in core."""
    out, inn, spatial = weight_axes(axes, "shape search")
    return {"modes": ((axes[out], 1), (1, axes[inn])), **({"kernel_with": 1} if spatial else {})}


def tt_candidates(ctx: Any) -> list:
    """``tt`` (and ``ht``, whose SVD-like shape is the same with an R x R root): the chain enumerator."""
    return ctx.chains(lambda axes, ts: ([(svd_modes(axes), lambda r: r)], []))


def tr_candidates(ctx: Any) -> list:
    """``tr``: the chain enumerator with bonds read as a ring."""
    return ctx.chains(lambda axes, ts: ([(svd_modes(axes), lambda r: [r, 1])], []), ring=True)

"""Semi-tensor Tucker (STTu; Zhao et al., arXiv 2109.15200) as a graph.

STTu replaces each Tucker mode product by the semi-tensor mode product: for a factor
U_k of shape (I_k/t, R_k/t), the mode-k map is (U_k (x) I_t), an I_k x R_k matrix whose
stored part is t^2 times smaller than a Tucker factor. The graph never forms U_k (x) I_t:

- the core's rank leg of size R_k is declared as two legs ``core.r_<k>`` (R_k/t) and
  ``core.t_<k>`` (t), in that order, so the core reshaped to R_k is indexed p * t + j;
- factor ``u_<k>`` has legs ``(i: I_k/t, r: R_k/t)``, with ``u_<k>.r -- core.r_<k>``;
- ``core.t_<k>`` stays open and output axis k fuses ``[u_<k>.i, core.t_<k>]``, index i * t + j.

Then W[.., i*t + j, ..] = sum_p U_k[i, p] G[.., p*t + j, ..], which is exactly
(U_k (x) I_t)[i*t + j, p*t + j'] = U_k[i, p] delta(j, j') applied to the core's mode k.
With t_k = 1 the axis is plain Tucker (no t leg); axes outside ``compress`` stay full in the
core. Parameters: prod(R_k, or I_k if uncompressed) + sum_k (I_k/t_k)(R_k/t_k).
An int t applies to the axes it divides (a conv kernel's 3x3 axes keep t = 1); t given per
axis must divide it. Ranks not divisible by t raise a ShapeError (no lcm expansion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ...errors import ShapeError, TemplateError
from ...graph import TensorGraph
from ..tucker.build import Rank, per_axis, positive_int, tucker_ranks

__all__ = ["semi_tucker", "semi_tucker_params"]

T = int | Sequence[int] | Mapping[str, int]


def _semi_spec(
    axes: Mapping[str, int], rank: Rank, t: T, compress: Sequence[str] | str | None, clip: bool = False
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    sizes, ranks = tucker_ranks(axes, rank, compress, "semi_tucker", clip)
    ts = {}
    spread = isinstance(t, int) and not isinstance(t, bool)  # one t for all: axes it does not divide stay plain
    if spread and t > 1 and ranks and all(sizes[ax] % t for ax in ranks):
        raise ShapeError(f"semi_tucker: t={t} divides none of the compressed axes {[sizes[ax] for ax in ranks]}")
    for ax, tk in per_axis(t, list(ranks), "semi_tucker: t", ShapeError).items():
        tk = ts[ax] = positive_int(tk, f"semi_tucker: t for axis {ax!r}", ShapeError)
        if spread and sizes[ax] % tk:
            tk = ts[ax] = 1
        if sizes[ax] % tk:
            raise ShapeError(
                f"semi-tensor axis {ax!r} (legs u_{ax}.i, core.t_{ax}): size {sizes[ax]} is not divisible by "
                f"t={tk}; choose t dividing it, t={{{ax!r}: 1}}, or leave the axis out of compress"
            )
        if ranks[ax] % tk:
            raise ShapeError(
                f"semi-tensor bond core.r_{ax} -- u_{ax}.r: rank {ranks[ax]} is not divisible by t={tk}"
            )
    return sizes, ranks, ts


def semi_tucker_params(
    axes: Mapping[str, int], *, rank: Rank, t: T = 2, compress: Sequence[str] | str | None = None,
    clip: bool = False,
) -> int:
    """Closed-form parameter count: prod(R_k, or I_k if uncompressed) + sum_k (I_k/t_k)(R_k/t_k)."""
    sizes, ranks, ts = _semi_spec(axes, rank, t, compress, clip)
    core = math.prod(ranks.get(ax, n) for ax, n in sizes.items())
    return core + sum((sizes[ax] // ts[ax]) * (r // ts[ax]) for ax, r in ranks.items())


def semi_tucker(
    axes: Mapping[str, int], *, rank: Rank, t: T = 2, compress: Sequence[str] | str | None = None,
    clip: bool = False,
) -> TensorGraph:
    """Semi-tensor Tucker: factors (I_k/t, R_k/t) acting as U_k (x) I_t on the core's modes.

    Args:
        axes: the weight's axes, name -> size.
        rank: the Tucker ranks R_k (int, one per compressed axis, or dict by axis), each
            divisible by its t and at most its axis size.
        t: the semi-tensor factor (default 2): one int for all compressed axes (an axis it does
            not divide, like a 3x3 kernel's, keeps a plain Tucker factor), one per axis, or a
            dict (strict: every value must divide its axis).
        compress: the axes that get a factor (default: all); the others stay full in the core.
        clip: lower a rank above its axis size to that size (a 3x3 kernel's axes stop at 3 while
            the channel ranks grow) instead of raising RankError.

    Returns:
        A frozen graph: node ``core`` and nodes ``u_<axis>`` of shape (I_k/t_k, R_k/t_k).
    """
    sizes, ranks, ts = _semi_spec(axes, rank, t, compress, clip)
    core: dict[str, int] = {}
    for ax, n in sizes.items():
        if ax not in ranks:
            core[ax] = n
            continue
        core[f"r_{ax}"] = ranks[ax] // ts[ax]
        if ts[ax] > 1:
            core[f"t_{ax}"] = ts[ax]
    if len(core) != len(sizes) + sum(ts[ax] > 1 for ax in ranks):
        raise TemplateError(f"semi_tucker: axis names {list(sizes)} clash with the core's legs 'r_<axis>', 't_<axis>'")
    g = TensorGraph("semi_tucker")
    g.add_node("core", core)
    outputs = {}
    for ax, n in sizes.items():
        if ax not in ranks:
            outputs[ax] = [f"core.{ax}"]
            continue
        g.add_node(f"u_{ax}", {"i": n // ts[ax], "r": ranks[ax] // ts[ax]})
        g.bond(f"core.r_{ax}", f"u_{ax}.r")
        outputs[ax] = [f"u_{ax}.i"] + ([f"core.t_{ax}"] if ts[ax] > 1 else [])
    return g.set_outputs(outputs).freeze()

"""Tucker and Tucker-2 as graphs: a core with one leg per axis and a factor matrix per compressed axis.

Construction (``tucker``): for every compressed axis k of size n_k and rank r_k, a factor
node ``u_<k>`` with legs ``(i: n_k, r: r_k)`` (the (n_k, r_k) matrix of tensorly and
``adtn.decompose.hosvd``) and a core leg ``core.r_<k>`` bonded to ``u_<k>.r``; output axis k
is the open leg ``u_<k>.i``. An axis left uncompressed keeps its full size as the open core
leg ``core.<k>`` (partial Tucker). The core's legs follow the axes' order, so the core tensor is
exactly tensorly's Tucker core:

    W = core x_1 U_1 x_2 U_2 ... ,   params = prod(r_k or n_k) + sum_k n_k r_k.

``tucker2`` is Tucker with only the channel axes ``out`` and ``in`` compressed (Tucker-2 of a
conv kernel: 1x1 conv in -> R_in, kh x kw conv R_in -> R_out, 1x1 conv R_out -> out;
Liang and Lee, IPDPSW 2021); on a linear weight it is the two-sided U_out core U_in^T.

The small argument checkers below (``check_axes``, ``select_axes``, ``per_axis``,
``positive_int``, ``tucker_ranks``) are shared with the CP, Kronecker and semi-Tucker templates.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from ...errors import AdtnError, RankError, ShapeError, TemplateError
from ...graph import TensorGraph
from ..factor import check_rank

__all__ = ["tucker", "tucker2", "tucker2_params", "tucker_params"]

Rank = int | Sequence[int] | Mapping[str, int]


# ---------------------------------------------------------------------- shared argument checks
def check_axes(axes: Mapping[str, int], where: str) -> dict[str, int]:
    """The weight's axes as a dict name -> size; sizes must be positive integers."""
    if not isinstance(axes, Mapping) or not axes:
        raise ShapeError(f"{where}: axes must be a non-empty mapping name -> size, e.g. {{'out': 64, 'in': 32}}, "
                         f"got {axes!r}")
    out = {}
    for name, size in axes.items():
        if not isinstance(name, str) or not name:
            raise ShapeError(f"{where}: axis names must be non-empty strings, got {name!r}")
        out[name] = positive_int(size, f"{where}: axis {name!r} size", ShapeError)
    return out


def positive_int(value: object, where: str, error: type[AdtnError] = RankError) -> int:
    """``value`` (any integral type) as a positive int, else ``error`` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise error(f"{where} must be a positive integer, got {value!r}")
    return int(value)


def select_axes(chosen: Sequence[str] | str | None, names: Sequence[str], where: str) -> list[str]:
    """The axes named in ``chosen`` (None: all), in the weight's axis order."""
    if chosen is None:
        return list(names)
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    unknown = [ax for ax in chosen if ax not in names]
    if unknown:
        raise TemplateError(f"{where}: unknown axis {unknown[0]!r}; the weight's axes are {list(names)}")
    if len(set(chosen)) != len(chosen) or not chosen:
        raise TemplateError(f"{where}: name each axis at most once and at least one axis, got {chosen}")
    return [ax for ax in names if ax in chosen]


def per_axis(value: object, names: Sequence[str], where: str, error: type[AdtnError] = RankError) -> dict[str, object]:
    """Spread an option over ``names``: one value for all, one per axis in order, or a dict by axis."""
    names = list(names)
    if isinstance(value, Mapping):
        unknown = [ax for ax in value if ax not in names]
        if unknown:
            raise TemplateError(f"{where}: unknown axis {unknown[0]!r}; it applies to axes {names}")
        missing = [ax for ax in names if ax not in value]
        if missing:
            raise error(f"{where}: no value for axis {missing[0]!r}; give one for each of {names}")
        return {ax: value[ax] for ax in names}
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(names):
            raise error(f"{where}: needs one value per axis {names}, got {len(value)}: {list(value)}")
        return dict(zip(names, value))
    return {ax: value for ax in names}


# ---------------------------------------------------------------------- Tucker
def tucker_ranks(
    axes: Mapping[str, int], rank: Rank, compress: Sequence[str] | str | None, where: str, clip: bool = False
) -> tuple[dict[str, int], dict[str, int]]:
    """Checked (sizes, ranks of the compressed axes); a rank may not exceed its axis size (with
    ``clip`` it is lowered to it)."""
    sizes = check_axes(axes, where)
    by_rank = compress is None and isinstance(rank, Mapping)
    if by_rank:
        compress = list(rank)
    chosen = select_axes(compress, list(sizes), f"{where}: {'rank' if by_rank else 'compress'}")
    raw = per_axis(rank, chosen, f"{where}: rank")
    ranks = {}
    for ax, r in raw.items():
        ranks[ax] = positive_int(r, f"{where}: rank for axis {ax!r}")
        if clip:
            ranks[ax] = min(ranks[ax], sizes[ax])
        check_rank(f"core.r_{ax} -- u_{ax}.r", ranks[ax], sizes[ax], f"size of axis {ax!r}")
    return sizes, ranks


def tucker_params(axes: Mapping[str, int], *, rank: Rank, compress: Sequence[str] | str | None = None,
                  clip: bool = False) -> int:
    """Closed-form parameter count: prod(r_k, or n_k if uncompressed) + sum_k n_k r_k."""
    sizes, ranks = tucker_ranks(axes, rank, compress, "tucker", clip)
    core = math.prod(ranks.get(ax, n) for ax, n in sizes.items())
    return core + sum(sizes[ax] * r for ax, r in ranks.items())


def tucker_graph(sizes: Mapping[str, int], ranks: Mapping[str, int], name: str) -> TensorGraph:
    """The frozen Tucker graph for checked ``sizes`` and ``ranks`` (compressed axes only)."""
    g = TensorGraph(name)
    core = {f"r_{ax}" if ax in ranks else ax: ranks.get(ax, n) for ax, n in sizes.items()}
    if len(core) != len(sizes):
        raise TemplateError(f"{name}: axis names {list(sizes)} clash with the core's rank legs 'r_<axis>'")
    g.add_node("core", core)
    outputs = {}
    for ax, n in sizes.items():
        if ax in ranks:
            g.add_node(f"u_{ax}", {"i": n, "r": ranks[ax]})
            g.bond(f"core.r_{ax}", f"u_{ax}.r")
            outputs[ax] = [f"u_{ax}.i"]
        else:
            outputs[ax] = [f"core.{ax}"]
    return g.set_outputs(outputs).freeze()


def tucker(axes: Mapping[str, int], *, rank: Rank, compress: Sequence[str] | str | None = None,
           clip: bool = False) -> TensorGraph:
    """Tucker: a core times one factor matrix per compressed axis.

    Args:
        axes: the weight's axes, name -> size, e.g. ``{"out": 64, "in": 32, "kh": 3, "kw": 3}``.
        rank: one rank for every compressed axis, one per compressed axis in axis order, or a
            dict axis -> rank (which, without ``compress``, also chooses the compressed axes).
            A rank may not exceed its axis size.
        compress: the axes that get a factor (default: all); the others stay full in the core.
        clip: lower a rank above its axis size to that size instead of raising RankError.

    Returns:
        A frozen graph: node ``core`` and nodes ``u_<axis>`` of shape (n_k, r_k).
    """
    sizes, ranks = tucker_ranks(axes, rank, compress, "tucker", clip)
    return tucker_graph(sizes, ranks, "tucker")


# ---------------------------------------------------------------------- Tucker-2
def _tucker2_spec(axes: Mapping[str, int], rank: Rank, clip: bool = False) -> tuple[dict[str, int], dict[str, int]]:
    sizes = check_axes(axes, "tucker2")
    missing = [ax for ax in ("out", "in") if ax not in sizes]
    if missing:
        raise TemplateError(f"tucker2: compresses the channel axes 'out' and 'in', but axis {missing[0]!r} is "
                            f"missing from {list(sizes)}; use tucker(..., compress=...) for other axes")
    if isinstance(rank, Sequence) and not isinstance(rank, str) and len(rank) != 2:
        raise RankError(f"tucker2: rank is an int or a pair (R_out, R_in), got {list(rank)}")
    if isinstance(rank, Sequence) and not isinstance(rank, str):
        rank = {"out": rank[0], "in": rank[1]}
    return tucker_ranks(sizes, rank, ("out", "in"), "tucker2", clip)


def tucker2_params(axes: Mapping[str, int], *, rank: Rank, clip: bool = False) -> int:
    """Closed-form parameter count: in*R_in + prod(other axes)*R_in*R_out + R_out*out."""
    sizes, ranks = _tucker2_spec(axes, rank, clip)
    rest = math.prod(n for ax, n in sizes.items() if ax not in ranks)
    return sizes["in"] * ranks["in"] + rest * ranks["in"] * ranks["out"] + ranks["out"] * sizes["out"]


def tucker2(axes: Mapping[str, int], *, rank: Rank, clip: bool = False) -> TensorGraph:
    """Tucker-2: factors on the channel axes ``out`` and ``in`` only; the spatial axes stay in the core.

    Args:
        axes: ``{"out": O, "in": C, "kh": kh, "kw": kw}`` (conv) or ``{"out": O, "in": I}`` (linear).
        rank: R for both channels, or ``(R_out, R_in)``, or ``{"out": R_out, "in": R_in}``.
        clip: lower a rank above its axis size to that size instead of raising RankError.

    Returns:
        A frozen graph ``u_out -- core -- u_in``; the core is (R_out, R_in, kh, kw).
    """
    sizes, ranks = _tucker2_spec(axes, rank, clip)
    return tucker_graph(sizes, ranks, "tucker2")

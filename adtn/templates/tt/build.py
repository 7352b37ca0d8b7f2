"""Tensor train (TT-matrix / MPO) and tensor ring templates for linear and conv weights.

Linear weight ``{"out": O, "in": I}`` with modes O = o_0 ... o_{d-1}, I = i_0 ... i_{d-1}:
core k has legs ``(l: r_{k-1}, o: o_k, i: i_k, r: r_k)`` (Novikov et al. 2015). In ``tt``
the first core has no ``l`` and the last no ``r`` (boundary ranks 1 are left out, so the
parameter count is exact); in ``tr`` every core has both and ``core{d-1}.r`` bonds to
``core0.l`` (Wang et al. 2018). The axis ``out`` fuses ``core0.o, core1.o, ...`` row-major,
``in`` fuses ``core0.i, ...``: the standard TT-matrix reshape.

Conv weight ``{"out", "in", "kh", "kw"}`` (Garipov et al. 2016): a spatial core
``spatial`` with legs ``(kh, kw, r)`` comes first, then the channel cores ``core0...`` as
above (``(l, o: cout_k, i: cin_k, r)``); in ``tr`` the spatial core gets an ``l`` too and
closes the ring. ``kernel_with=k`` puts the kernel legs on channel core k instead
(``(l, o, i, kh, kw, r)``, no spatial core): with modes ``((O, 1), (1, C))`` and
``kernel_with=1`` the TT is exactly a truncated SVD of the (out, in*kh*kw) unfolding, the
shape search's floor.

Ranks: an int (every bond) or one per bond, in chain order ``spatial -- core0 -- core1 ...``
(for ``tr`` the last one is the closing bond). A rank larger than useful raises RankError
naming the bond and the maximum; ``clip=True`` lowers it to that maximum instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import TemplateError
from ...graph import TensorGraph
from ..factor import Bound, enforce_ranks, ranks_list, resolve_modes, weight_axes

__all__ = [
    "Chain",
    "Site",
    "bond_names",
    "build_tr",
    "build_tt",
    "chain_bounds",
    "chain_sites",
    "kernel_site",
    "outputs_of",
    "tr_params",
    "tt_params",
]


@dataclass(frozen=True)
class Site:
    """One core of a chain: its node name, open legs (name -> size, in order) and the output
    axis of each open leg."""

    node: str
    legs: dict[str, int]
    axes: dict[str, str]

    @property
    def size(self) -> int:
        return math.prod(self.legs.values())


@dataclass(frozen=True)
class Chain:
    """A chain (or ring) of sites: ``left[k]``/``right[k]`` are the sizes of site k's ``l``/``r``
    legs (None: no such leg); site k's ``r`` bonds to site k+1's ``l`` (and the last to the
    first in a ring). ``outputs`` lists each axis's legs in fusing order."""

    sites: tuple[Site, ...]
    left: tuple[int | None, ...]
    right: tuple[int | None, ...]
    ring: bool
    outputs: dict[str, list[str]]

    @property
    def num_params(self) -> int:
        return sum((lf or 1) * s.size * (rt or 1) for s, lf, rt in zip(self.sites, self.left, self.right))

    def graph(self, name: str) -> TensorGraph:
        g = TensorGraph(name)
        for site, lf, rt in zip(self.sites, self.left, self.right):
            legs = ({"l": lf} if lf is not None else {}) | site.legs | ({"r": rt} if rt is not None else {})
            g.add_node(site.node, legs=legs)
        n = len(self.sites)
        for k in range(n if self.ring else n - 1):
            g.bond((self.sites[k].node, "r"), (self.sites[(k + 1) % n].node, "l"))
        g.set_outputs(self.outputs)
        return g.freeze()


def chain_sites(
    axes: Mapping[str, int],
    modes: Any = None,
    d: int | None = None,
    where: str = "tt",
    kernel_with: int | None = None,
) -> list[Site]:
    """The sites of a TT-matrix chain: ``spatial`` (conv only), then ``core0 ... core{d-1}``
    with open legs ``o`` (on the out axis) and ``i`` (on the in axis); with ``kernel_with=k``
    the kernel legs join core k and there is no spatial core. Memoised for hashable arguments
    (the budget search counts thousands of ranks on the same modes); the sites are shared, so
    callers copy a site's legs before changing them."""
    try:
        return list(_cached_sites(tuple(axes.items()), modes, d, where, kernel_with))
    except TypeError:  # unhashable modes (lists, dicts)
        return _sites(axes, modes, d, where, kernel_with)


@functools.lru_cache(maxsize=4096)
def _cached_sites(axes: tuple, modes: Any, d: int | None, where: str, kernel_with: Any) -> tuple[Site, ...]:
    return tuple(_sites(dict(axes), modes, d, where, kernel_with))


def _sites(axes: Mapping[str, int], modes: Any, d: int | None, where: str, kernel_with: Any) -> list[Site]:
    out, inn, spatial = weight_axes(axes, where)
    m = resolve_modes(axes, modes, d, where)
    sites = [Site(f"core{k}", {"o": o, "i": i}, {"o": out, "i": inn}) for k, (o, i) in enumerate(zip(m[out], m[inn]))]
    kernel = {ax: axes[ax] for ax in spatial}
    if kernel_with is None:
        return ([Site("spatial", kernel, {ax: ax for ax in spatial})] if spatial else []) + sites
    k = kernel_site(kernel_with, len(sites), bool(spatial), where, "core")
    sites[k] = Site(sites[k].node, sites[k].legs | kernel, sites[k].axes | {ax: ax for ax in spatial})
    return sites


def kernel_site(kernel_with: Any, n: int, conv: bool, where: str, what: str) -> int:
    """``kernel_with`` checked: the index of the channel core (or leaf) that takes the kernel legs."""
    if not conv:
        raise TemplateError(f"{where}: kernel_with={kernel_with!r} needs a conv weight (kh, kw axes), got a linear one")
    if not isinstance(kernel_with, int) or isinstance(kernel_with, bool) or not 0 <= kernel_with < n:
        raise TemplateError(
            f"{where}: kernel_with must be the index of a channel {what}, 0..{n - 1} "
            f"({what}0..{what}{n - 1}), got {kernel_with!r}"
        )
    return kernel_with


def outputs_of(axes: Mapping[str, int], sites: Sequence[Site]) -> dict[str, list[str]]:
    """Each axis's open legs, in site order."""
    result: dict[str, list[str]] = {ax: [] for ax in axes}
    for site in sites:
        for leg, ax in site.axes.items():
            result[ax].append(f"{site.node}.{leg}")
    return result


def bond_names(sites: Sequence[Site], ring: bool) -> list[str]:
    n = len(sites)
    return [f"{sites[k].node}.r -- {sites[(k + 1) % n].node}.l" for k in range(n if ring else n - 1)]


def chain_bounds(sizes: Sequence[int], nodes: Sequence[str], ring: bool, right_factor: Sequence[int] | None = None):
    """Per bond, the largest useful ranks as (max, why) pairs, given the current ranks.

    A chain bond can carry at most the product of the modes on either side; any bond at most
    its neighbour core's other rank times that core's modes (else the core is rank deficient).
    ``right_factor[k]`` (the semi-tensor t of bond k, default 1) multiplies the limits from the
    bond's right side (B's rows carry an I_t that copies its ``s`` leg).
    """
    n = len(sizes)

    def bounds(ranks: list[int]) -> list[list[Bound]]:
        out = []
        for k in range(len(ranks)):
            a, b = k, (k + 1) % n
            f = right_factor[k] if right_factor is not None else 1
            times = f" times t={f}" if f > 1 else ""
            limits: list[Bound] = []
            if not ring:
                limits.append((math.prod(sizes[: k + 1]), "product of the modes left of the bond"))
                limits.append((math.prod(sizes[k + 1 :]) * f, f"product of the modes right of the bond{times}"))
            if ring or a > 0:
                limits.append((ranks[k - 1] * sizes[a], f"rank of {nodes[a]}.l times the modes of {nodes[a]}"))
            if ring or b < n - 1:
                limits.append((sizes[b] * ranks[(k + 1) % len(ranks)] * f,
                               f"modes of {nodes[b]} times the rank of {nodes[b]}.r{times}"))
            out.append(limits)
        return out

    return bounds


def _chain(axes, rank, modes, d, clip, ring: bool, where: str, options: dict, kernel_with: int | None) -> Chain:
    if options:
        raise TemplateError(f"{where}: unknown options {sorted(options)}; valid: rank, modes, d, clip, kernel_with")
    sites = chain_sites(axes, modes, d, where, kernel_with)
    n = len(sites)
    if ring and n < 2:
        raise TemplateError(
            f"{where}: a ring needs at least 2 cores, got {n} (modes of length 1); "
            "a 1-core ring would be a self-trace: use more modes or 'tt'"
        )
    names = bond_names(sites, ring)
    ranks = ranks_list(rank, len(names), where)
    ranks = enforce_ranks(names, ranks, chain_bounds([s.size for s in sites], [s.node for s in sites], ring), clip)
    if ring:
        left = tuple(ranks[k - 1] for k in range(n))
        right = tuple(ranks)
    else:
        left = (None,) + tuple(ranks)
        right = tuple(ranks) + (None,)
    return Chain(tuple(sites), left, right, ring, outputs_of(axes, sites))


def tt_params(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> int:
    """Parameters of ``build_tt``: sum over cores of r_{k-1} * (modes of core k) * r_k, r_0 = r_d = 1."""
    return _chain(axes, rank, modes, d, clip, False, "tt", options, kernel_with).num_params


def tr_params(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> int:
    """Parameters of ``build_tr``: sum over cores of r_{k-1} * (modes of core k) * r_k, r_0 = r_d."""
    return _chain(axes, rank, modes, d, clip, True, "tr", options, kernel_with).num_params


def build_tt(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> TensorGraph:
    """Tensor train: a TT-matrix (linear) or spatial core + TT-matrix (conv) chain.

    Args:
        axes: ``{"out": O, "in": I}`` or ``{"out": O, "in": C, "kh": kh, "kw": kw}``.
        rank: one rank for every bond, or one per bond (d - 1 linear, d conv).
        modes: ``(out_modes, in_modes)`` of equal length; balanced (``factorize``) when None.
        d: number of channel cores when ``modes`` is None (default: modes of about 8).
        clip: lower ranks larger than useful to the maximum instead of raising RankError.
        kernel_with: conv only: the channel core that carries the kernel legs (no spatial core).
    """
    return _chain(axes, rank, modes, d, clip, False, "tt", options, kernel_with).graph("tt")


def build_tr(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> TensorGraph:
    """Tensor ring: the TT chain closed by a bond from the last core to the first.

    Same arguments as ``build_tt``; one rank per bond is d (linear) or d + 1 (conv) ranks,
    the last being the closing bond. A linear ring needs d >= 2 cores.
    """
    return _chain(axes, rank, modes, d, clip, True, "tr", options, kernel_with).graph("tr")

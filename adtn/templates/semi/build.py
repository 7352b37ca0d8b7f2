"""Semi-tensor train and ring templates (STT, STR; Zhao et al., arXiv 2109.15200).

The left semi-tensor product of A (m x n) and B (p x q) with p = n * t is

    A ⋉ B = (A ⊗ I_t) B,      (A ⊗ I_t)[(x, s), (c, s')] = A[x, c] * δ(s, s'),

an (m t) x q matrix: B's rows are read as pairs (c, s) with c slow, s fast; c is summed with
A's column, s is carried to the result's rows next to A's row index x. Nothing else is
needed in a graph: B's leg of size p is declared as two legs, ``l`` (n, bonded to A) and
``s`` (t, left open), and ``s`` is fused into the output right after A's open leg, so that
output index = x * t + s. A ⊗ I_t is never formed.

Construction (our reading of "cores joined by the semi-tensor product"; the paper gives no
core shapes). Start from the TT-matrix chain of ``tt`` (modes (o_k, i_k), nominal ranks r_k,
each divisible by t) and join every pair of neighbouring channel cores A = core k,
B = core k+1 by a semi-tensor product instead of a matrix product:

* at the bond k -- k+1, A is everything left of it, G_0 ⋉ ... ⋉ G_k, as a matrix: rows = its
  open legs, columns = core k's ``r`` leg, of size r_{k+1}/t. B is core k+1 as a matrix: rows =
  its legs (l, s), l slow, of size (r_{k+1}/t) * t = r_{k+1} (the nominal rank), columns =
  (o, i, r). So the bond is stored t times smaller on A's side, and A ⋉ B = (A ⊗ I_t) B;
* B's open ``s`` leg (size t) is fused into the ``in`` axis right after core k's ``i`` leg,
  so core k stores i_k / t and the in-mode i_k of the weight is the pair (core k.i, B.s).

Core shapes, linear weight, d cores (legs in order, r' = r / t, i' = i / t):

    semi_tt:  core0 (o, i', r'),  core k (l: r', s: t, o, i', r'),  core{d-1} (l: r', s: t, o, i)
    semi_tr:  every core (l: r', s: t, o, i', r'); core{d-1}.r bonds to core0.l and core0.s
              is fused last into ``in``, right after core{d-1}.i.

Axis ``out`` fuses core0.o, core1.o, ...; ``in`` fuses core0.i, core1.s, core1.i, core2.s,
..., core{d-1}.i (and core0.s for the ring). The contraction is the left-to-right product
G_0 ⋉ G_1 ⋉ ... ⋉ G_{d-1} of the core matrices above (for the ring, traced over the closing
bond, which is a semi-tensor product too), reshaped to the weight. Each middle core stores
r' * t * o * i' * r' = o * i * r^2 / t^2 entries, t^2 fewer than the TT core at the same
nominal rank (t in the rank, t in the in-mode taken over by the identity); so does core0 of
``semi_tt``, its last core stores as many as in ``tt``, and ``semi_tr`` stores exactly t^2
fewer than ``tr`` at a uniform rank. ``t=1`` gives exactly ``tt`` / ``tr``.

Conv weight: as in ``tt``, a ``spatial`` core (kh, kw, r) comes first; only the bonds between
channel cores are semi-tensor products (the kernel axes are kept whole), the bonds touching
``spatial`` are ordinary ones of the full rank. ``kernel_with=k`` puts the kernel legs on
channel core k instead (no spatial core), as in ``tt``.

Sizes that do not divide raise ShapeError naming the bond: a rank not divisible by t, or an
in-mode of A not divisible by t.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ShapeError, TemplateError
from ...graph import TensorGraph
from ..factor import enforce_ranks, ranks_list
from ..tt.build import Chain, Site, bond_names, chain_bounds, chain_sites

__all__ = ["build_semi_tr", "build_semi_tt", "semi_tr_params", "semi_tt_params"]


def _semi_chain(axes, rank, modes, d, t, clip, ring: bool, where: str, options: dict,
                kernel_with: int | None = None) -> Chain:
    if options:
        raise TemplateError(f"{where}: unknown options {sorted(options)}; valid: rank, modes, d, t, clip, kernel_with")
    if not isinstance(t, numbers.Integral) or isinstance(t, bool) or t < 1:
        raise TemplateError(f"{where}: t (the semi-tensor factor) must be a positive integer, got {t!r}")
    sites = chain_sites(axes, modes, d, where, kernel_with)
    n = len(sites)
    if ring and n < 2:
        raise TemplateError(
            f"{where}: a ring needs at least 2 cores, got {n} (modes of length 1); "
            "a 1-core ring would be a self-trace: use more modes or 'semi_tt'"
        )
    names = bond_names(sites, ring)
    ranks = ranks_list(rank, len(names), where)
    # bond k joins site k (A) and site k+1 (B); it is a semi-tensor product between channel cores
    semi = [t > 1 and "o" in sites[k].legs and "o" in sites[(k + 1) % n].legs for k in range(len(names))]
    # B's side of a semi-tensor bond may use t times the TT rank (I_t copies its s leg); on A's
    # side, which stores r/t columns against its rows, a rank beyond the TT limit is redundant
    bounds = chain_bounds([s.size for s in sites], [s.node for s in sites], ring, [t if s else 1 for s in semi])
    ranks = enforce_ranks(names, ranks, bounds, clip)
    for k, is_semi in enumerate(semi):
        if not is_semi:
            continue
        if clip and ranks[k] % t:
            ranks[k] = max(t, ranks[k] - ranks[k] % t)
        if ranks[k] % t:
            raise ShapeError(f"semi-tensor bond {names[k]}: rank {ranks[k]} is not divisible by t={t}")
        a = sites[k]
        if a.legs["i"] % t:
            raise ShapeError(
                f"semi-tensor bond {names[k]}: in mode {a.legs['i']} of {a.node} is not divisible by t={t} "
                f"(I_{t} takes over a factor {t} of it); choose modes whose in modes divide by {t}"
            )
    stored = [r // t if s else r for r, s in zip(ranks, semi)]
    new_sites = []
    for j, site in enumerate(sites):
        legs = dict(site.legs)
        axes_of = dict(site.axes)
        incoming = j - 1 if (ring or j > 0) else None  # bond whose B side is site j
        outgoing = j if (ring or j < n - 1) else None  # bond whose A side is site j
        if incoming is not None and semi[incoming % len(semi)]:
            legs = {"s": t} | legs
            axes_of = {"s": axes_of["i"]} | axes_of
        if outgoing is not None and semi[outgoing]:
            legs["i"] //= t
        new_sites.append(Site(site.node, legs, axes_of))
    outputs: dict[str, list[str]] = {ax: [] for ax in axes}
    for j, site in enumerate(new_sites):
        for leg, ax in site.axes.items():
            if leg != "s":
                outputs[ax].append(f"{site.node}.{leg}")
        nxt = new_sites[(j + 1) % n]
        if (ring or j < n - 1) and "s" in nxt.legs:
            outputs[nxt.axes["s"]].append(f"{nxt.node}.s")
    if ring:
        left = tuple(stored[k - 1] for k in range(n))
        right = tuple(stored)
    else:
        left = (None,) + tuple(stored)
        right = tuple(stored) + (None,)
    return Chain(tuple(new_sites), left, right, ring, outputs)


def semi_tt_params(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    t: int = 2,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> int:
    """Parameters of ``build_semi_tt``: the sum of the stored core sizes (see the module doc)."""
    return _semi_chain(axes, rank, modes, d, t, clip, False, "semi_tt", options, kernel_with).num_params


def semi_tr_params(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    t: int = 2,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> int:
    """Parameters of ``build_semi_tr``: the sum of the stored core sizes (see the module doc)."""
    return _semi_chain(axes, rank, modes, d, t, clip, True, "semi_tr", options, kernel_with).num_params


def build_semi_tt(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    t: int = 2,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> TensorGraph:
    """Semi-tensor train: the TT-matrix chain with cores joined by the semi-tensor product.

    Args:
        axes: ``{"out": O, "in": I}`` or ``{"out": O, "in": C, "kh": kh, "kw": kw}``.
        rank: nominal rank (the larger side of each semi-tensor bond), one for all bonds or
            one per bond; must divide by ``t`` on semi-tensor bonds.
        modes: ``(out_modes, in_modes)``; every in mode but the last must divide by ``t``.
        d: number of channel cores when ``modes`` is None.
        t: the semi-tensor factor: bonds and in-modes are stored t times smaller.
        clip: lower ranks larger than useful (then to a multiple of t) instead of raising.
        kernel_with: conv only: the channel core that carries the kernel legs (no spatial core);
            with modes ``((O, 1), (t, C / t))`` and ``kernel_with=1`` the chain is exactly a
            truncated SVD of the (out, in*kh*kw) unfolding at rank / t.
    """
    return _semi_chain(axes, rank, modes, d, t, clip, False, "semi_tt", options, kernel_with).graph("semi_tt")


def build_semi_tr(
    axes: Mapping[str, int],
    *,
    rank: int | Sequence[int],
    modes: Any = None,
    d: int | None = None,
    t: int = 2,
    clip: bool = False,
    kernel_with: int | None = None,
    **options: Any,
) -> TensorGraph:
    """Semi-tensor ring: ``semi_tt`` closed by a semi-tensor bond from the last core to the first.

    Same arguments as ``build_semi_tt``; every in mode must divide by ``t`` (linear), and the
    last rank is the closing bond's.
    """
    return _semi_chain(axes, rank, modes, d, t, clip, True, "semi_tr", options, kernel_with).graph("semi_tr")

"""The shapes the search tries, per format, each with its rank at the budget and its bonds.

A format's ``candidates`` hook (``Format.candidates``) gets a ``SearchContext`` and returns its
candidates, usually through the context's enumerators: ``chains`` for the formats shaped by
``modes=`` (chains and trees, their truncated-SVD shapes given by the format) and ``kronecker``
for Kronecker factor splits. The context carries those enumerators (and ``Candidate``,
``svd_key``) so that formats, which sit below the search in the import order, need not import it.

A candidate is a set of build options (``factors=`` for ``kronecker``, ``modes=`` and for
semi-tensor templates ``t=``), the network's axes (padded where an axis is zero-padded), its
rank at the budget as ``budget=`` sizes a layer (the largest uniform rank that fits,
``adtn.budget.knob_for_budget``, then single bonds topped up, ``fill_ranks``) and, per bond of
its network, the unfolding the bond cuts and the bond's rank: the error
bound is the root of the sum of those unfoldings' squared tails (Oseledets for a chain,
Grasedyck for an HT tree, whose root's two children cut one unfolding and count once; Van
Loan's exact error for a Kronecker split).

Enumerated: every split of every axis over its divisors (kronecker), every two-core pairing
(o_1, o_2) x (i_1, i_2) including the unbalanced ones whose bond is the truncated SVD
((out, 1), (1, in); tagged ``svd``), balanced modes of 3 .. max(3, d) cores in both orders
(d: the default number of cores), ``t`` in 2 and 4 for the semi-tensor templates, the
template's default shape (tagged ``default``) and, for an axis whose size factors badly (a
prime), the same on its zero-padded size (tagged ``padded``). Candidates with the same bonds
and parameter count are one.

The floor (``_svd_like``, tagged ``svd``): the truncated SVD of the (out | in*kh*kw)
unfolding written in the template's own format, at the largest rank R within the budget:

- ``tt`` / ``ht``: modes ((O, 1), (1, C)), conv kernels on the in core / leaf (``kernel_with=1``);
  HT adds an R x R root;
- ``tr``: the same with ranks [R, 1] (a ring whose closing bond is 1 is a chain);
- ``semi_tt``: modes ((O, 1), (t, C / t)), rank t R: the out core is A of the semi-tensor
  bond and stores R columns, B's rows (R, t) are a general R x (C kh kw) matrix;
- ``semi_tr`` on a conv kernel: the same modes with the spatial core last in the ring, ranks
  [1, t R, kh kw] (+ kh kw squared entries). A linear ``semi_tr`` at t >= 2 cannot hold it: its
  closing bond puts I_t on the out core, so the right factor is block-diagonal with t
  repeated blocks. There, wherever no t >= 2 shape fits the budget, and for every ``semi_tr``
  (whose spatial core can cost more than one rank of the SVD), the ring or chain at t = 1 joins
  when t is the search's to choose (``semi_tr`` at t = 1 is ``tr``, ``semi_tt`` is ``tt``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..budget import fill_ranks, knob_for_budget
from ..errors import AdtnError, TemplateError
from ..graph import TensorGraph
from ..options import balanced, resolve
from ..templates import Format, get, names
from ..templates.factor import default_modes, divisors, factorize, weight_axes
from .spectra import Key, canonical, kron_key

__all__ = ["Candidate", "SearchContext", "enumerate_candidates", "graph_bonds", "options_key", "searchable",
           "svd_key"]

SvdShapes = Callable[[dict[str, int], tuple[Any, ...]], tuple[list[tuple[dict, Any]], list[tuple[dict, Any]]]]


@dataclass
class Candidate:
    """One shape: build options, the network's axes, rank, parameter count and bonds."""

    options: dict[str, Any]
    axes: dict[str, int]
    rank: Any
    params: int
    bonds: tuple[tuple[Key, int], ...]
    tag: str = ""
    estimate: float = math.inf
    error: float | None = None
    output: float | None = None

    def signature(self) -> tuple:
        """Equal for candidates with the same axes, parameter count and bonds (the same bound)."""
        return (tuple(self.axes.values()), self.params, tuple(sorted(self.bonds)))


def options_key(options: Mapping[str, Any]) -> str:
    """A comparable text of a shape's options (factors as size tuples, modes as tuples)."""
    if "factors" in options:
        a, b = options["factors"]
        return repr((tuple(dict(a).values()) if isinstance(a, Mapping) else tuple(a),
                     tuple(dict(b).values()) if isinstance(b, Mapping) else tuple(b)))
    if "modes" not in options:  # a format shaped by other options (or by none)
        return repr(sorted((k, repr(v)) for k, v in options.items()))
    out, inn = options["modes"]
    return repr((tuple(out), tuple(inn), options.get("t"), options.get("kernel_with")))


# ---------------------------------------------------------------------- bonds of a network
def side_key(graph: TensorGraph, side: set[str]) -> Key:
    """The unfolding whose rows are the open legs of the nodes in ``side``."""
    runs = []
    for legs in graph.outputs.values():
        runs.append(tuple((graph.leg_size(leg), leg.node in side) for leg in legs))
    return canonical(tuple(runs))


def graph_bonds(graph: TensorGraph, ring: bool) -> tuple[tuple[Key, int], ...]:
    """(unfolding, rank) per bond: for a tree, the two sides of each bond. A ring is read as TR-SVD
    builds it: the chain left when the closing bond (rank r_0) is cut, its first bond at rank
    r_0 r_1 (TR-SVD's first split, exact), the others at r_k / r_0 (TR-SVD truncates the rest
    at r_k with r_0 moved to its columns, which can hold up to r_0 times the rank of the weight's
    own unfolding): an estimate, not a bound, that errs on the high side."""
    nodes = graph.nodes_with_role("param")
    bonds = [b for b in graph.bonds if b.a.node in nodes and b.b.node in nodes]
    if ring:  # bond k joins nodes k and k + 1, the last one closes the ring
        closing = bonds[-1].size
        ranks = [bonds[0].size * closing] + [max(1, b.size // closing) for b in bonds[1:-1]]
        return tuple((side_key(graph, set(nodes[: k + 1])), r) for k, r in enumerate(ranks))
    out = []
    for bond in bonds:
        nbr: dict[str, set[str]] = {n: set() for n in nodes}
        for b in bonds:
            if b is not bond:
                nbr[b.a.node].add(b.b.node)
                nbr[b.b.node].add(b.a.node)
        side, stack = {bond.a.node}, [bond.a.node]
        while stack:
            for m in nbr[stack.pop()] - side:
                side.add(m)
                stack.append(m)
        out.append((side_key(graph, side), bond.size))
    # two bonds that cut the same unfolding (an HT root's children) are projected by the left and
    # right singular vectors of one matrix: together a truncated SVD at the smaller rank
    best: dict[Key, int] = {}
    for key, r in out:
        best[key] = min(r, best.get(key, r))
    return tuple(best.items())


def svd_key(axes: Mapping[str, int]) -> Key:
    """The unfolding (out | everything else): a bond cutting it is a truncated SVD."""
    return canonical(tuple(((n, k == 0),) for k, n in enumerate(axes.values())))


# ---------------------------------------------------------------------- enumeration
def _pad_variants(axes: dict[str, int], dmax: int) -> list[dict[str, int]]:
    """The axes with out / in zero-padded to a size that factors well, where theirs does not."""
    out, inn, _ = weight_axes(axes, "shape search")
    choices = []
    for ax in (out, inn):
        sizes = {axes[ax]} | {balanced(axes[ax], d)[0] for d in sorted({2, dmax})}
        choices.append(sorted(sizes))
    return [{**axes, out: o, inn: i} for o, i in itertools.product(*choices) if (o, i) != (axes[out], axes[inn])]


def _kron(axes: dict[str, int], budget: float, dense: int, tag: str) -> list[Candidate]:
    names = list(axes)
    svd = tuple(axes[ax] if k == 0 else 1 for k, ax in enumerate(names))
    found = []
    for a in itertools.product(*[divisors(axes[ax]) for ax in names]):
        b = tuple(axes[ax] // x for ax, x in zip(names, a))
        pa, pb = math.prod(a), math.prod(b)
        rank = min(int(budget * dense // (pa + pb)), pa, pb)
        if rank < 1:
            continue
        kind = tag or ("svd" if a == svd else "")
        found.append(Candidate({"factors": (dict(zip(names, a)), dict(zip(names, b)))}, dict(axes), rank,
                               rank * (pa + pb), ((kron_key(a, b), rank),), kind))
    return found


def _mode_sets(axes: dict[str, int], dmax: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    out, inn, spatial = weight_axes(axes, "shape search")
    o, i = axes[out], axes[inn]
    sets = [((o,), (i,))] if spatial else []
    for mo in divisors(o):
        for mi in divisors(i):
            modes = ((mo, o // mo), (mi, i // mi))
            if all(a * b > 1 for a, b in zip(*modes)):
                sets.append(modes)
    for d in range(3, dmax + 1):
        bo, bi = factorize(o, d), factorize(i, d)
        sets += [(x, y) for x in (bo, bo[::-1]) for y in (bi, bi[::-1])]
    return list(dict.fromkeys(sets))


def _chain(t: Format, ring: bool, axes: dict[str, int], modes: Any, extra: dict, rank: Any, budget: float | None,
           dense: int, tag: str) -> Candidate | None:
    """A chain / tree candidate at ``rank`` (or at the largest uniform rank within ``budget``)."""
    kwargs = {"modes": modes, "clip": True, **extra}
    try:
        if rank is None:  # as budget= sizes a layer: the largest uniform rank, then bonds topped up
            rank = knob_for_budget("shape search", t, axes, "rank", kwargs, budget, dense)
            rank = fill_ranks(t, axes, {**kwargs, "rank": rank}, budget * dense)
        graph = t.build(axes, rank=rank, **kwargs)
        params = t.formula(axes, rank=rank, **kwargs)
    except AdtnError:
        return None
    bonds = graph_bonds(graph, ring)
    svd = any(key == svd_key(axes) for key, _ in bonds)
    return Candidate({"modes": tuple(map(tuple, modes)), **extra}, dict(axes), rank, params, bonds,
                     tag or ("svd" if svd else ""))


def _svd_like(t: Format, axes: dict[str, int], budget: float, dense: int, ts: tuple[int | None, ...],
              svd_shapes: SvdShapes, fallback_always: bool) -> list[Candidate]:
    """The format's truncated-SVD shapes (``svd_shapes(axes, ts) -> (shapes, fallbacks)``, each
    (build options, R -> rank)) at the largest R within ``budget``, tagged ``svd``: the
    approximation is the truncated SVD itself, so its bound is the unfolding's tail at R. The
    fallbacks join when no other shape fits, and always with ``fallback_always`` (a semi-tensor
    ring, whose t >= 2 conv shape pays kh kw squared entries, more than one rank of the SVD on
    small kernels)."""
    out = axes[weight_axes(axes, "shape search")[0]]
    cap = min(out, dense // out)  # the rank of the (out | in*kh*kw) unfolding

    def sized(shapes: list[tuple[dict, Any]]) -> list[Candidate]:
        found = []
        for options, rank_of in shapes:
            r = _largest(lambda r, o=options, f=rank_of: t.formula(axes, rank=f(r), **o), cap, budget * dense)
            if r:
                found.append(Candidate(dict(options), dict(axes), rank_of(r),
                                       t.formula(axes, rank=rank_of(r), **options), ((svd_key(axes), r),), "svd"))
        return found

    shapes, fallback = svd_shapes(axes, ts)
    found = sized(shapes)
    return found + (sized(fallback) if not found or fallback_always else [])


def _largest(count: Callable[[int], int], cap: int, limit: float) -> int:
    """The largest r in 1..cap with count(r) <= limit (count grows with r; a rank too large for a
    bond counts as over), or 0."""
    def fits(r: int) -> bool:
        try:
            return count(r) <= limit
        except AdtnError:
            return False

    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _chains(fmt: Format, ring: bool, axes: dict[str, int], budget: float, dense: int, dmax: int,
            ts: tuple[int | None, ...], tag: str) -> list[Candidate]:
    found = []
    for modes in _mode_sets(axes, dmax):
        for t in ts:
            c = _chain(fmt, ring, axes, modes, {"t": t} if t else {}, None, budget, dense, tag)
            if c is not None:
                found.append(c)
    return found


def _default_spec(template: str, axes: dict[str, int], budget: float, extra: dict) -> Any:
    """The fixed rule ``budget=`` alone gives (balanced modes, padded where they would be lopsided)."""
    kind = "conv" if len(axes) > 2 else "linear"
    try:
        with warnings.catch_warnings():  # a budget the fixed rule fills badly is the search's business
            warnings.simplefilter("ignore")
            return resolve("shape search", template, axes, kind, budget=budget, options=dict(extra))
    except AdtnError:
        return None


class SearchContext:
    """What the shape search hands a format's ``candidates`` hook: the weight's ``axes``, the
    ``budget`` (a fraction of the unpadded dense count), the caller's ``t`` and ``pad``, and
    the enumerators the built-in formats use."""

    Candidate = Candidate  # formats build their own candidates without importing this module

    def __init__(self, template: str, axes: Mapping[str, int], budget: float, t: int | None, pad: bool) -> None:
        self.template, self.format = template, get(template)
        self.axes, self.budget, self.t, self.pad = dict(axes), float(budget), t, pad
        self.dense = math.prod(self.axes.values())
        self.dmax = max(3, len(default_modes(self.axes)[weight_axes(self.axes, "shape search")[0]]))

    def svd_key(self, axes: Mapping[str, int] | None = None) -> Key:
        """The unfolding (out | everything else) of ``axes`` (default: the weight's)."""
        return svd_key(self.axes if axes is None else axes)

    def largest(self, count: Callable[[int], int], cap: int) -> int:
        """The largest r in 1..cap whose ``count(r)`` is within the budget (an AdtnError counts as over), or 0."""
        return _largest(count, cap, self.budget * self.dense)

    def variants(self) -> list[tuple[dict[str, int], str]]:
        """The axes to enumerate on: the weight's, then (with ``pad``) zero-padded sizes tagged ``padded``."""
        return [(self.axes, "")] + ([(v, "padded") for v in _pad_variants(self.axes, self.dmax)] if self.pad else [])

    def chains(self, svd_shapes: SvdShapes, *, ring: bool = False, t_values: tuple[int, ...] = (),
               fallback_always: bool = False) -> list[Candidate]:
        """The candidates of a format shaped by ``modes=``: its default shape, its truncated-SVD
        shapes (``svd_shapes``) and every mode set of ``_mode_sets`` on every variant. ``ring``:
        bonds are read as TR-SVD builds a ring (``graph_bonds``); ``t_values``: the semi-tensor
        factors tried when the caller gives no ``t``."""
        ts = (self.t,) if self.t is not None else t_values or (None,)
        spec = _default_spec(self.template, self.axes, self.budget,
                             {"t": self.t} if t_values and self.t is not None else {})
        found = []
        if spec is not None:
            opts = {k: v for k, v in spec.kwargs.items() if k in ("t",)}
            default = _chain(self.format, ring, dict(spec.axes), spec.kwargs["modes"], opts, spec.kwargs["rank"],
                             None, self.dense, "default")
            found += [default] if default is not None else []
        found += _svd_like(self.format, self.axes, self.budget, self.dense, ts, svd_shapes, fallback_always)
        for ax, tag in self.variants():
            found += _chains(self.format, ring, ax, self.budget, self.dense, self.dmax, ts, tag)
        return found

    def kronecker(self, default_factors: Callable[[dict[str, int]], tuple[dict, dict]]) -> list[Candidate]:
        """The candidates of a format shaped by ``factors=(a, b)`` (a sum of Kronecker products):
        its default split (``default_factors`` unless the fixed rule picked one), then every
        split of every axis over its divisors on every variant (Van Loan's exact error)."""
        spec = _default_spec(self.template, self.axes, self.budget, {})
        found = []
        if spec is not None:
            kw = dict(spec.kwargs)
            fa, fb = kw.get("factors") or default_factors(self.axes)
            fa, fb = dict(zip(self.axes, dict(fa).values())), dict(zip(self.axes, dict(fb).values()))
            a, b = tuple(fa.values()), tuple(fb.values())
            rank = kw["rank"]
            found.append(Candidate({"factors": (fa, fb)}, dict(self.axes), rank, rank * (math.prod(a) + math.prod(b)),
                                   ((kron_key(a, b), rank),), "default"))
        for ax, tag in self.variants():
            found += _kron(ax, self.budget, self.dense, tag)
        return found


def searchable() -> list[str]:
    """The registered formats the shape search has candidates for."""
    return [n for n in names() if get(n).candidates is not None]


def enumerate_candidates(template: str, axes: Mapping[str, int], budget: float, t: int | None = None,
                         pad: bool = True) -> list[Candidate]:
    """Every candidate shape of ``template`` for a weight of ``axes`` at ``budget`` (a fraction of
    the unpadded dense count), from its ``candidates`` hook; the default first, then the
    SVD-like ones, duplicates dropped."""
    fmt = get(template)
    if fmt.candidates is None:
        raise TemplateError(f"shape search: template {template!r} is not searchable; valid: {searchable()}")
    found = list(fmt.candidates(SearchContext(template, axes, budget, t, pad)))
    found.sort(key=lambda c: c.tag not in ("default", "svd"))  # stable: those two survive deduplication
    unique: dict[tuple, Candidate] = {}
    for c in found:
        unique.setdefault(c.signature(), c)
    return list(unique.values())

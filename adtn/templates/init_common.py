"""What every template initialiser shares: input checks, the rank-or-tol driver, and three
graph-driven tensor moves (regroup the weight by node, pad to a graph, shrink redundant bonds).

An initialiser decomposes a dense weight into the tensors of the graph its template builds.
``initialise`` runs the two paths the same way for every format:

- ``rank`` given: build the graph with exactly the caller's options (so its structure is the
  module's), decompose at the graph's bond sizes, and ``pad`` any factor a decomposer returned
  smaller (TR-SVD, HOSVD clip ranks an unfolding cannot carry) back to the graph's shapes.
- ``tol`` given: build a probe graph at rank 1 (open legs do not depend on ranks), decompose
  with the tolerance, ``shrink`` bonds larger than either side can use (exact, so the template's
  rank checks pass), read the rank spec off the tensors and build the graph at it.

``pad`` keeps the contraction exact (one side of every padded bond is zero) yet trainable (the
other side gets noise at the node's own scale, so neither side's gradient is stuck at zero,
as in LoRA's zero/random pair).
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import AdtnError, RankError, ShapeError, TemplateError
from ..graph import Leg, TensorGraph
from .registry import get

__all__ = ["check_tol", "check_weight", "contract", "initialise", "open_legs", "pad", "regroup", "rel_error", "shrink"]

Decompose = Callable[[Tensor, TensorGraph, "float | None"], dict[str, Tensor]]
SpecOf = Callable[[TensorGraph, Mapping[str, tuple[int, ...]]], Any]


def check_weight(dense: Any, axes: Mapping[str, int], where: str) -> Tensor:
    """The weight as a floating tensor of the axes' shape, free of NaN and inf."""
    if not isinstance(axes, Mapping) or not axes:
        raise ShapeError(f"{where}: axes must be a non-empty mapping name -> size, got {axes!r}")
    if not isinstance(dense, Tensor):
        dense = torch.as_tensor(dense)
    if not dense.is_floating_point():
        raise ShapeError(f"{where}: the weight must be a floating-point tensor, got dtype {dense.dtype}")
    want = tuple(axes.values())
    if tuple(dense.shape) != want:
        raise ShapeError(f"{where}: the weight has shape {tuple(dense.shape)}, but axes {dict(axes)} give {want}")
    if not bool(torch.isfinite(dense).all()):
        raise ShapeError(f"{where}: the weight contains {'NaN' if bool(torch.isnan(dense).any()) else 'inf'}")
    if dense.dtype in (torch.float16, torch.bfloat16):  # torch.linalg needs float32 or float64
        dense = dense.float()
    return dense.detach()


def check_tol(tol: Any, where: str) -> float:
    """``tol`` is the relative Frobenius error to reach, strictly between 0 and 1."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) or not 0 < tol < 1:
        raise RankError(
            f"{where}: tol is the relative Frobenius error to reach, a number in (0, 1), got {tol!r} "
            "(tol >= 1 accepts any weight, even zeros)"
        )
    return float(tol)


def check_size(rank: Any, tol: Any, where: str) -> float | None:
    """Exactly one of rank and tol; returns the checked tol (None on the rank path)."""
    if rank is not None and tol is not None:
        raise RankError(f"{where}: give rank= or tol=, not both (got rank={rank!r}, tol={tol!r})")
    if rank is None and tol is None:
        raise RankError(f"{where}: give rank= (an int, one per bond, or a dict) or tol= (a relative error in (0, 1))")
    return None if tol is None else check_tol(tol, where)


def rel_error(approx: Tensor, dense: Tensor) -> float:
    """||approx - dense|| / ||dense|| (0 for a zero weight reproduced exactly)."""
    norm = float(torch.linalg.vector_norm(dense))
    diff = float(torch.linalg.vector_norm(approx - dense))
    return diff / norm if norm else diff


# ---------------------------------------------------------------------- graph-driven moves
def open_legs(graph: TensorGraph, node: str) -> list[Leg]:
    """The node's unbonded legs, in its leg order."""
    return [Leg(node, leg) for leg in graph.legs(node) if graph.partner((node, leg)) is None]


def regroup(dense: Tensor, graph: TensorGraph, groups: Sequence[Sequence[Leg]]) -> Tensor:
    """The weight with one mode per group of open legs: each output axis is split into its legs
    (row-major, as the graph fuses them) and the legs are gathered group by group."""
    legs = [leg for ax_legs in graph.outputs.values() for leg in ax_legs]
    if list(graph.axis_sizes.values()) != list(dense.shape):
        raise ShapeError(f"graph {graph.name!r}: axes {graph.axis_sizes} do not match the weight {tuple(dense.shape)}")
    pos = {leg: k for k, leg in enumerate(legs)}
    perm = [pos[leg] for group in groups for leg in group]
    if sorted(perm) != list(range(len(legs))):
        raise AdtnError(f"graph {graph.name!r}: the leg groups {groups} do not cover the open legs {legs} once each")
    t = dense.reshape([graph.leg_size(leg) for leg in legs]).permute(perm)
    return t.reshape([math.prod(graph.leg_size(leg) for leg in group) for group in groups])


def pad(tensors: Mapping[str, Tensor], graph: TensorGraph, seed: int = 0) -> dict[str, Tensor]:
    """Zero-pad tensors up to the graph's node shapes without changing the contraction.

    For a bond padded from size s to S, the ``a`` side's slices s..S are zero and the ``b`` side's
    get Gaussian noise at that node's RMS scale: the product is unchanged, and gradient descent
    can still grow the new directions.
    """
    old = {n: tuple(t.shape) for n, t in tensors.items()}
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        shape = graph.shape(name)
        if len(shape) != t.dim() or any(a > b for a, b in zip(t.shape, shape)):
            raise AdtnError(f"init: node {name!r} got a tensor of shape {tuple(t.shape)}, larger than its legs {shape}")
        if tuple(t.shape) == shape:
            out[name] = t
            continue
        full = t.new_zeros(shape)
        full[tuple(slice(0, k) for k in t.shape)] = t
        out[name] = full
    gen = torch.Generator().manual_seed(seed)
    padded = []
    for bond in graph.bonds:
        a, b = bond.a, bond.b
        if a.node not in old or b.node not in old:
            continue
        ia, ib = list(graph.legs(a.node)).index(a.name), list(graph.legs(b.node)).index(b.name)
        was = old[a.node][ia]
        if was < bond.size:
            padded.append((a.node, ia, b.node, ib, was))
    for _, _, node, i, was in padded:  # noise first, zeros last: every padded bond has a zero side
        t = out[node]
        rms = float(tensors[node].pow(2).mean().sqrt()) if tensors[node].numel() else 1.0
        part = t.narrow(i, was, t.shape[i] - was)
        noise = torch.randn(part.shape, generator=gen, dtype=torch.float64) * (rms or 1.0)
        part.copy_(noise.to(part))
    for node, i, _, _, was in padded:
        out[node].narrow(i, was, out[node].shape[i] - was).zero_()
    return out


def shrink(tensors: Mapping[str, Tensor], graph: TensorGraph) -> dict[str, Tensor]:
    """Lower every bond larger than the product of one side's other legs, exactly.

    Such a bond carries at most that many independent directions: the small side B (as a
    bond x rest matrix of rank <= rest) is QR-split into R^T Q^T, B becomes Q^T and R moves into
    the other side. Repeats until no bond can shrink. ``graph`` gives leg names and bonds only;
    sizes are read from the tensors. Bonds touching non-parameter nodes are left alone.
    """
    out = dict(tensors)
    names = {n: list(graph.legs(n)) for n in out}
    bonds = [b for b in graph.bonds if b.a.node in out and b.b.node in out]
    changed = True
    while changed:
        changed = False
        for bond in bonds:
            for big, small in ((bond.a, bond.b), (bond.b, bond.a)):
                ib, isml = names[big.node].index(big.name), names[small.node].index(small.name)
                s = out[small.node]
                size = s.shape[isml]
                rest = s.numel() // size if size else 0
                if size <= rest:
                    continue
                mat = s.movedim(isml, 0).reshape(size, rest)
                q, r = torch.linalg.qr(mat.mT)  # mat = r^T q^T, q (rest x rest), r (rest x size)
                small_shape = list(s.movedim(isml, 0).shape)
                small_shape[0] = rest
                out[small.node] = q.mT.reshape(small_shape).movedim(0, isml)
                out[big.node] = torch.tensordot(out[big.node], r, dims=([ib], [1])).movedim(-1, ib)
                changed = True
    return out


# ---------------------------------------------------------------------- the driver
def _shapes_match(tensors: Mapping[str, Tensor], graph: TensorGraph) -> bool:
    return all(tuple(t.shape) == graph.shape(n) for n, t in tensors.items())


def initialise(
    name: str,
    dense: Any,
    axes: Mapping[str, int],
    rank: Any,
    tol: Any,
    options: Mapping[str, Any],
    decompose: Decompose,
    spec_of: SpecOf,
    probe_rank: Any = 1,
    rank_spec: Callable[[Any, TensorGraph], Any] | None = None,
) -> tuple[TensorGraph, dict[str, Tensor]]:
    """Run a template's initialiser: (graph, node tensors) at ``rank`` or at the ranks ``tol`` needs.

    Args:
        name: the registered template.
        decompose: ``(weight, graph, tol)`` -> node tensors; with tol None at the graph's bond
            sizes (it may return smaller ones), else at the ranks the tolerance picks.
        spec_of: ``(graph, shapes)`` -> the ``rank=`` that builds a graph whose nodes have these
            shapes (graph: the probe, for leg names).
        probe_rank: a rank every weight accepts, to build the probe of the tol path.
        rank_spec: turns a caller's rank dict (a form the build does not take) into one it
            does, given the probe graph.

    On the tol path, when the template's rank bounds are tighter than the decomposition's
    (``semi_tt``'s last bond), the ranks are clipped to them and a RuntimeWarning reports the
    error reached if it is above ``tol``.
    """
    where = f"{name} init"
    dense = check_weight(dense, axes, where)
    tol = check_size(rank, tol, where)
    build = get(name).build
    options = dict(options)
    clip_ok = "clip" in _params(build)
    probe_options = {**options, "clip": True} if clip_ok else options

    def probe() -> TensorGraph:
        return build(axes, rank=probe_rank, **probe_options)

    if tol is None:
        if rank_spec is not None and isinstance(rank, Mapping):
            rank = rank_spec(rank, probe())
        graph = build(axes, rank=rank, **options)
        return graph, pad(decompose(dense, graph, None), graph)
    shape_probe = probe()
    tensors = shrink(decompose(dense, shape_probe, tol), shape_probe)
    spec = spec_of(shape_probe, {n: tuple(t.shape) for n, t in tensors.items()})
    try:
        graph = build(axes, rank=spec, **options)
        if _shapes_match(tensors, graph):
            return graph, tensors
    except RankError:
        if not clip_ok:
            raise
    if not clip_ok:
        raise TemplateError(f"{where}: the ranks {spec} found for tol={tol} built a graph of other shapes")
    # the template's rank bounds are tighter than the decomposition's: clip and decompose again
    clipped = build(axes, rank=spec, **{**options, "clip": True})
    spec = spec_of(clipped, {n: clipped.shape(n) for n in tensors})
    graph = build(axes, rank=spec, **options)
    tensors = pad(decompose(dense, graph, None), graph)
    err = rel_error(contract(graph, tensors), dense)
    if err > tol:
        warnings.warn(
            f"{where}: tol={tol} needs ranks above what the template allows; at the largest allowed "
            f"ranks {spec} the error is {err:.3g}",
            RuntimeWarning,
            stacklevel=3,
        )
    return graph, tensors


def contract(graph: TensorGraph, tensors: Mapping[str, Tensor]) -> Tensor:
    """The dense tensor of ``graph`` with these node tensors."""
    from ..module import TNModule  # module.py imports no template: this could sit on top

    first = next(iter(tensors.values()))
    with torch.no_grad():
        return TNModule(graph, dict(tensors), dtype=first.dtype, device=first.device).dense()


def _params(fn: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(fn).parameters)

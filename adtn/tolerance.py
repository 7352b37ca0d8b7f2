"""``tol=``: the smallest network whose template initialiser reaches a relative error, its shape searched.

``adtn.encode(layer, "tt", tol=0.1)`` asks the template's SVD-family initialiser for the
smallest ranks reaching the tolerance; for the searchable templates the factorization is
searched as under ``budget=`` (``adtn.shapes``), so a weight of low rank is not held in
balanced modes that cannot see it.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from .errors import AdtnError, RankError
from .graph import TensorGraph
from .options import resolve

__all__ = ["tol_structure"]


def tol_structure(cls, where, args, weight, template, rank, depth, budget, tol, modes, init, options):
    """(structure, node tensors, ShapeChoice or None) from the template's initialiser at the
    smallest size reaching ``tol``.

    For a searchable format (``adtn.shapes.searchable()``) with none of its shape options (``modes=``,
    ``factors=``, ``d=``, ``kernel_with=``) and no ``shape="default"``, the shape is searched too: the
    initialiser first runs on the default shape; then, up to three times, ``adtn.shapes.search``
    finds the shape with the lowest error at the parameters that network has, and the
    initialiser runs on that shape; the smallest network reaching ``tol`` is kept.
    """
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < 1:
        raise RankError(f"{where}: tol is a relative Frobenius error in (0, 1), got {tol!r}")
    options = dict(options)
    shape = options.pop("shape", "unset")
    options.pop("calibration", None)  # the tolerance is on the weight
    axes = cls.weight_axes(**args)
    spec = resolve(where, template, axes, cls.kind, rank=rank, depth=depth, budget=budget, tol=tol, modes=modes,
                   options=options, nouns=cls.nouns)
    t = spec.template
    if init not in ("auto", "decompose"):
        raise RankError(f"{where}: tol needs init='decompose' (the template's SVD-family initialiser), got "
                        f"init={init!r}")
    if t.init is None:
        raise RankError(f"{where}: tol needs init='decompose', and template {t.name!r} has no SVD-family "
                        "initialiser; pass rank= or budget=")
    dense = weight.detach()
    best = (*t.init(_padded(dense, spec.axes), spec.axes, tol=float(tol), **spec.kwargs), None)
    if shape in ("default", None) or t.forced(options, modes) or weight.is_meta:
        return best
    from .shapes import search, searchable

    if not t.searchable:
        if shape == "auto":
            raise AdtnError(f"{where}: shape='auto' supports templates {searchable()}, got {template!r}")
        return best
    fixed = {k: v for k, v in spec.kwargs.items() if k not in (*t.shape_options, "t", t.knob)}
    for _ in range(3):
        try:
            choice = search(template, dense, axes, min(1.0, best[0].num_params / dense.numel()), t=options.get("t"))
        except AdtnError:
            break
        ax = choice.axes or axes
        graph, tensors = t.init(_padded(dense, ax), ax, tol=float(tol), **fixed, **choice.options)
        if graph.num_params >= best[0].num_params:
            break
        best = (graph, tensors, _tol_choice(choice, graph, tensors, dense))
    return best


def _tol_choice(choice: Any, graph: TensorGraph, tensors: Mapping[str, torch.Tensor], dense: torch.Tensor) -> Any:
    """The search's choice restated for the network ``tol`` built in its shape: its ranks, size and error
    (the runners-up and the default shape were compared at another size, so they are left out)."""
    from .templates.init_common import contract
    from .templates.registry import template_of

    approx = contract(graph, tensors)[tuple(slice(0, n) for n in dense.shape)]
    err = float(torch.linalg.vector_norm(approx - dense) / torch.linalg.vector_norm(dense).clamp_min(1e-30))
    found = template_of(graph)
    rank = found[1].get("rank") if found else choice.rank
    return dataclasses.replace(choice, rank=rank, error=err, params=graph.num_params, measured=True, runners_up=(),
                               default_error=None, output_error=None, criterion="weight")


def _padded(dense: torch.Tensor, axes: Mapping[str, int]) -> torch.Tensor:
    """``dense`` zero-padded to ``axes``' sizes (itself when they match)."""
    if tuple(dense.shape) == tuple(axes.values()):
        return dense
    out = dense.new_zeros(tuple(axes.values()))
    out[tuple(slice(0, n) for n in dense.shape)] = dense
    return out

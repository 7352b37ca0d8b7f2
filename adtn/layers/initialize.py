"""``initialize``: set a TN layer's network from a dense weight (decompose, fit or random)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .. import fitting
from ..errors import AdtnError
from ..graph import TensorGraph
from ..templates import get

if TYPE_CHECKING:
    from .base import TNLayer

__all__ = ["INITS", "POOR_FIT", "initialize", "match_norm"]

INITS = ("auto", "decompose", "fit", "random")


def _same_structure(a: Any, b: Any) -> bool:
    if isinstance(a, TensorGraph) and isinstance(b, TensorGraph):
        return a.structure_hash() == b.structure_hash()
    return a == b


POOR_FIT = 0.5  # a fitted init with a larger relative weight error is reported


def initialize(layer: TNLayer, dense: torch.Tensor, init: str = "auto", fit_options: Mapping | None = None,
               calibration: Any = None) -> None:
    """Set ``layer.tn`` from a dense weight, in place.

    ``"auto"``: the template's SVD-family initialiser when it has one; a deep ADTN (no
    initialiser, and fitting one is slow and rarely gets close) starts random; any other
    network is fitted (``adtn.fit``). ``"decompose"``: the initialiser or an error; ``"fit"``:
    gradient descent, with a progress bar on a terminal; ``"random"``: the layer's random
    network scaled to the dense weight's Frobenius norm, so that on inputs of unit variance its
    outputs have the dense layer's variance. ``calibration`` (an ``adtn.calibration.Covariance``
    of the layer's inputs): the initialiser or the fit minimises the output error on them
    instead of the weight error (``adtn.calibration.init``).
    """
    if init not in INITS:
        raise AdtnError(f"init must be one of {list(INITS)}, got {init!r}")
    t = get(layer.template) if layer.template is not None else None  # None: the user's own graph
    if init == "auto" and (t is None or t.init is None) and layer.tn.fallback_init == "random":
        init = "random"  # a deep ADTN (TNNetwork.fallback_init)
    if init == "random":
        match_norm(layer, dense)
        return
    target = layer.pad_weight(dense.detach())
    name = repr(t.name) if t is not None else "None (a user graph)"
    cov = None
    if calibration is not None:
        from ..calibration.init import fit_covariance

        cov = fit_covariance(calibration, layer.axes, layer.tn_axes)
    if init in ("auto", "decompose") and t is not None and t.init is not None:
        if cov is not None:
            from ..calibration.init import calibrated_init

            graph, tensors = calibrated_init(t.name, target, layer.tn_axes, cov, **layer.template_options)
        else:
            graph, tensors = t.init(target, layer.tn_axes, **layer.template_options)
        if not _same_structure(graph, layer.structure):
            raise AdtnError(f"{type(layer).__name__}: template {t.name!r} initialised a different structure than "
                            f"the layer's ({graph} vs {layer.structure}); options {layer.template_options}")
        layer.load_node_tensors(tensors)
        return
    if init == "decompose":
        raise AdtnError(f"{type(layer).__name__}: init='decompose' needs an SVD-family initialiser, and template "
                        f"{name} has none; use init='fit' (gradient descent) or 'auto'")
    options = {"progress": None, **dict(fit_options or {})}  # None: a bar on a terminal only
    if cov is not None:
        from ..calibration.init import metric

        options["metric"] = metric(cov)
    result = fitting.fit(layer.tn, target.to(dtype=layer.tn.dtype, device=layer.tn.device), **options)
    if result.rel_error > POOR_FIT:
        warnings.warn(f"{type(layer).__name__}: fitting {name} to the weight stopped at relative error "
                      f"{result.rel_error:.3f} ({result.stop} after {result.steps} steps): the layer does not "
                      "reproduce the dense one; train it (adtn.finetune, distillation from the dense model) or pass "
                      "init='random' to skip the fit", stacklevel=3)


@torch.no_grad()
def match_norm(layer: TNLayer, dense: torch.Tensor) -> None:
    """Scale ``layer``'s network so that its (cropped) weight has the Frobenius norm of ``dense``:
    E|Wx|^2 = |W|_F^2 for inputs of unit variance, so the outputs get the dense layer's variance.
    Multiplies one parameter node (the scale buffer of a deep ADTN), which scales every entry."""
    if dense.is_meta or layer.weight.is_meta:
        return
    have, want = torch.linalg.vector_norm(layer.dense_weight().detach()), torch.linalg.vector_norm(dense.detach())
    if not (torch.isfinite(have) and torch.isfinite(want) and have > 0 and want > 0):
        return
    factor = float(want / have)
    layer.tn.rescale_(factor)

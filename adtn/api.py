"""The user-facing entry points: ``encode`` a torch layer as a TN layer; ``save`` / ``load`` compressed models.

The option language (``resolve``, ``Spec``, ...) lives in ``adtn.options`` and ``initialize``
in ``adtn.layers.initialize``, below the layers that use them; both are re-exported here.

    layer = adtn.encode(nn.Linear(4096, 4096), template="adtn", depth=1)
    layer = adtn.encode(conv, template="kronecker", rank=8)
    layer = adtn.encode(linear, template="tt", budget=0.05, init="decompose")
    adtn.save(model, "model.pt"); model = adtn.load_into(Net(), "model.pt")  # or adtn.load("model.pt")
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import nn

from .errors import AdtnError
from .layers import TNConv1d, TNConv2d, TNLayer, TNLinear
from .layers.initialize import INITS, POOR_FIT, initialize, match_norm
from .manifest import FORMAT, load, load_into, save
from .options import Spec, check_budget, resolve, true_ranks

__all__ = ["FORMAT", "INITS", "POOR_FIT", "OversizeWarning", "Spec", "check_budget", "encode", "initialize", "is_lazy",
           "load", "load_into", "match_norm", "resolve", "save", "true_ranks"]

SUPPORTED = "nn.Linear, nn.Conv1d, nn.Conv2d"


def is_lazy(layer: nn.Module) -> bool:
    """True for a lazy layer (``nn.LazyLinear``, ...) whose weight has no shape until its first forward."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in layer.parameters(recurse=False))


def encode(
    layer: nn.Module,
    template: str = "adtn",
    *,
    depth: int | None = None,
    rank: Any = None,
    budget: float | None = None,
    tol: float | None = None,
    modes: Any = None,
    init: str = "auto",
    forward: str = "auto",
    fit_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> TNLayer:
    """A drop-in TN layer approximating ``layer`` (``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``).

    Args:
        layer: the torch layer; its weight initialises the network, its bias is copied.
        template: a registered template (``adtn.templates.names()``).
        depth, rank: the template's size, whichever it takes.
        budget: instead, a fraction of the dense weight's parameters, in (0, 1]: the largest
            uniform rank (or depth) whose closed-form parameter count fits in it.
        tol: instead, a relative Frobenius error; the template's SVD-family initialiser picks
            the smallest ranks reaching it (needs ``init`` "auto" or "decompose"), in a searched
            shape for the searchable templates (``adtn.tolerance``).
        modes: ``(out_modes, in_modes)`` for templates that split axes into modes; balanced
            when None, a badly factorable (prime) size zero-padded.
        init: ``"auto"`` (the template's initialiser if any; a deep ADTN starts random; a user
            graph is fitted), ``"decompose"`` (the initialiser, or an error), ``"fit"`` (gradient
            descent, a progress bar on a terminal), or ``"random"`` (scaled to the weight's norm,
            so the outputs keep the dense layer's variance).
        forward: ``"auto"`` (cheaper of rebuild and streaming, per input shape), ``"dense"``, ``"direct"``.
        fit_options: keyword arguments of ``adtn.fit`` when fitting runs.
        **options: further template options, and two layer options: ``shape`` (``"auto"``:
            search the factorization (modes, Kronecker split, t) with the lowest error; the
            default under ``budget=`` for tt, tr, ht, kronecker, semi_tt and semi_tr when no
            ``modes=`` / ``factors=`` / ``d=`` is given; ``"default"`` keeps the fixed rule) and
            ``calibration`` (a batch of this layer's inputs: the search ranks shapes by output
            error on it instead of weight error).

    Returns:
        A ``TNLinear``, ``TNConv1d`` or ``TNConv2d`` on the layer's device and dtype; an
        ``OversizeWarning`` says when it holds more parameters than ``layer``'s weight.
    """
    kw = {"depth": depth, "rank": rank, "budget": budget, "tol": tol, "modes": modes, "init": init,
          "forward": forward, "fit_options": fit_options, **options}
    if budget is not None:
        check_budget("encode", budget)
    if isinstance(layer, TNLayer):
        raise AdtnError(f"encode: {type(layer).__name__} is already a TN layer")
    if is_lazy(layer):
        raise AdtnError(f"encode: {type(layer).__name__} is a lazy layer whose weight is not initialised yet; "
                        "run one forward pass first")
    if isinstance(layer, nn.Linear):
        out = TNLinear.from_linear(layer, template, **kw)
    elif isinstance(layer, nn.Conv2d):
        out = TNConv2d.from_conv2d(layer, template, **kw)
    elif isinstance(layer, nn.Conv1d):
        out = TNConv1d.from_conv1d(layer, template, **kw)
    else:
        kind = type(layer)
        name = f"nn.{kind.__name__}" if kind.__module__.startswith("torch.nn") else kind.__name__
        raise AdtnError(f"encode: {name} is not supported; supported: {SUPPORTED}")
    _warn_oversize(layer, out)
    return out


class OversizeWarning(UserWarning):
    """A TN layer with more parameters than the dense weight it replaces."""


def _warn_oversize(dense: nn.Module, layer: TNLayer) -> None:
    n, full = layer.num_tn_params, dense.weight.numel()
    if n <= full:
        return
    options = ", ".join(f"{k}={v!r}" for k, v in layer.template_options.items() if k != "clip")
    warnings.warn(f"encode: {type(dense).__name__} weight {tuple(dense.weight.shape)} as template "
                  f"{layer.template!r} ({options}) has {n:,} parameters, {n / full:.2f}x the dense weight's {full:,}: "
                  "larger than the layer it replaces; pass a smaller rank= or depth=, a budget= in (0, 1] or a "
                  "looser tol=", OversizeWarning, stacklevel=3)

"""Building a TN layer from a dense one (``TNLinear.from_linear``, ``TNConv2d.from_conv2d``,
``adtn.encode``): the shape search under ``budget=``, the calibration covariance, ``tol=``, and
initialising the network from the weight."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..errors import AdtnError
from ..templates.registry import check_options, get
from ..tolerance import tol_structure
from .initialize import INITS, initialize

if TYPE_CHECKING:
    from .base import TNLayer

__all__ = ["SHAPES", "encode_layer"]


LAYER_OPTIONS = ("shape", "calibration")  # encode options that are the layer's, not the template's


def encode_layer(cls: type[TNLayer], args: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None,
                 template: str, *, rank: Any, depth: int | None, budget: float | None, tol: float | None, modes: Any,
                 init: str, forward: str, fit_options: Mapping | None, options: dict[str, Any]) -> TNLayer:
    """A ``cls`` layer (its constructor arguments ``args``) whose network approximates ``weight``,
    with ``bias`` copied; the options as ``adtn.encode`` documents them."""
    where = f"{cls.__name__}.encode"
    if init not in INITS:
        raise AdtnError(f"{where}: init must be one of {list(INITS)}, got {init!r}")
    common = {"bias": bias is not None, "template": template, "forward": forward, "device": weight.device,
              "dtype": weight.dtype}
    options = dict(options)
    check_options(where, [template], options, LAYER_OPTIONS)
    cov = _covariance(where, args, weight, options.pop("calibration", None))
    choice = _auto_shape(where, cls, args, template, weight, bias, options, rank=rank, budget=budget, tol=tol,
                         modes=modes, init=init, cov=cov)
    structure = None
    if choice is not None:
        rank, budget, modes = choice.rank, None, choice.options.get("modes")
        options.update({k: v for k, v in choice.options.items() if k != "modes"})
        if get(template).clip:
            options["clip"] = True
        if choice.axes is not None:  # a zero-padded shape: the network is built on the padded axes
            structure = get(template).build(choice.axes, rank=rank, **{**options, **choice.options})
    if weight.is_meta:  # no values to start from: the network is only shaped (on the meta device)
        if tol is not None:
            raise AdtnError(f"{where}: tol= needs the weight's values, and a meta-device layer has none")
        init = "random"
    if structure is not None:
        layer = cls(**args, **common, structure=structure)
        initialize(layer, weight, init, fit_options, cov)
    elif tol is None:
        layer = cls(**args, **common, rank=rank, depth=depth, budget=budget, modes=modes, **options)
        initialize(layer, weight, init, fit_options, cov)
    else:
        structure, tensors, choice = tol_structure(cls, where, args, weight, template, rank, depth, budget, tol,
                                                    modes, init, options)
        layer = cls(**args, **common, structure=structure)
        layer.load_node_tensors(tensors)
        if cov is not None:  # tol picks the ranks by weight error; the tensors are then fit to the data
            initialize(layer, weight, init, fit_options, cov)
    layer.shape_choice = choice
    if bias is not None:
        with torch.no_grad():
            layer.bias.copy_(bias)
    return layer


SHAPES = ("auto", "default", None)


def _covariance(where: str, args: dict[str, Any], weight: torch.Tensor, calibration: Any) -> Any:
    """``calibration`` (a batch of the layer's inputs, batches, or a Covariance) as a Covariance."""
    if calibration is None:
        return None
    from ..calibration import covariance

    text = f"the layer (weight {tuple(weight.shape)})"
    return covariance(args, calibration, where=where, layer_text=text)


def _auto_shape(where: str, cls: type, args: dict[str, Any], template: str, weight: torch.Tensor,
                bias: torch.Tensor | None, options: dict[str, Any], *, rank: Any, budget: float | None,
                tol: float | None, modes: Any, init: str, cov: Any = None) -> Any:
    """The ``ShapeChoice`` of ``shape="auto"``, or None for the fixed rule; pops ``shape`` and
    ``calibration`` from ``options``.

    ``shape`` not given means ``"auto"`` when it is safe: ``budget=`` is given, none of the format's
    shape options (``modes=``, ``factors=``, ``d=``, ``kernel_with=``), the format is searchable and the network is initialised from the
    weight (``init`` "auto" or "decompose"). ``rank=``, ``tol=`` or ``init="random"`` keep the
    fixed rule, as do ``shape="default"`` and ``shape=None``. ``cov``: the covariance of the
    layer's calibration inputs; the search then ranks its finalists by the layer's output error
    on them (the relative error of ``layer(x)``, bias included, as ``adtn.compress`` reports it).
    """
    from ..shapes import search, searchable

    if tol is not None:  # tol= searches its own shape (api.tol_structure)
        return None
    shape = options.pop("shape", "unset")
    if shape not in SHAPES + ("unset",):
        raise AdtnError(f"{where}: shape must be 'auto', 'default' or None, got {shape!r}")
    fmt = get(template)
    forced = fmt.forced(options, modes)
    if shape == "unset":
        safe = (budget is not None and tol is None and rank is None and not forced and fmt.searchable
                and init in ("auto", "decompose") and not weight.is_meta)
        shape = "auto" if safe else None
    if shape != "auto" or forced:
        return None  # modes= / factors= / d= / kernel_with= force the shape
    if not fmt.searchable:
        raise AdtnError(f"{where}: shape='auto' supports templates {searchable()}, got {template!r}; "
                        "pass modes= or factors= instead")
    if budget is None or tol is not None:
        raise AdtnError(f"{where}: shape='auto' needs budget= (a fraction of the dense parameters), got "
                        f"budget={budget!r}, tol={tol!r}")
    b = None if bias is None else bias.detach()
    return search(template, weight.detach(), cls.weight_axes(**args), budget, covariance=cov, bias=b,
                  t=options.get("t"))

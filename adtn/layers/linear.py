"""TNLinear, a drop-in ``nn.Linear`` whose weight is a tensor network, and ``TNLayer``, what TN layers share.

A TN layer holds its template's structure compiled as a submodule ``tn`` (``tn.graph`` for
a TensorGraph, ``tn.deep`` for a DeepTN) and knows the template's name, which the engine
below does not: that is how conv layers find their fast forms. Sizes that tensorize badly
(a prime feature size) are zero-padded for templates that split axes into modes; the
layer crops the rebuilt weight, pads the input of a streamed pass, and says so in
``extra_repr``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..api import INITS, initialize, resolve, tol_structure
from ..errors import AdtnError, ShapeError
from ..graph import TensorGraph
from ..module import compile as compile_graph
from ..templates.registry import template_of
from .forward import ACTIVATION_WEIGHT, Choice, check_mode, choose, tn_cost

__all__ = ["TNLayer", "TNLinear", "compile_structure"]


def _uncompiled(fn: Any) -> Any:
    """``torch.compiler.disable(fn)`` only while compiling: importing dynamo costs ~2 s."""
    if torch.compiler.is_compiling():
        return torch.compiler.disable(fn)
    return fn


# ---------------------------------------------------------------------- structure -> module
def _structure_axes(structure: Any) -> dict[str, int]:
    if isinstance(structure, TensorGraph):
        return dict(structure.axis_sizes)
    return dict(structure.axes)  # DeepTN


def compile_structure(structure: Any, *, std: float, dtype: torch.dtype | None, device: Any) -> nn.Module:
    """A TensorGraph or DeepTN compiled with random init (``std``: the dense entries' target std)."""
    if isinstance(structure, TensorGraph):
        return compile_graph(structure, "normal", std=std, dtype=dtype, device=device)
    from ..deep import DeepTN

    if isinstance(structure, DeepTN):
        from ..deep_module import DeepTNModule

        return DeepTNModule(structure, dtype=dtype, device=device)
    raise AdtnError(f"a TN layer needs a TensorGraph or DeepTN structure, got {type(structure).__name__}")


def _node_tensors(tn: nn.Module) -> nn.ParameterDict:
    return tn.params if hasattr(tn, "params") else tn.gates


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler and compiler.is_compiling())


class TNLayer(nn.Module):
    """What every TN layer shares: the compiled ``tn``, padding, the weight and its eval cache,
    the forward-mode choice per input shape, and building from a dense layer."""

    kind = "linear"
    nouns: ClassVar[dict[str, str]] = {}

    def _setup(self, axes: dict[str, int], template: str, structure: Any, forward: str, device: Any,
               dtype: torch.dtype | None, sizing: dict[str, Any], options: dict[str, Any]) -> None:
        where = type(self).__name__
        self.forward_mode = check_mode(forward, where)
        self.axes = dict(axes)
        if structure is None:
            spec = resolve(where, template, axes, self.kind, options=options, nouns=self.nouns, **sizing)
            structure, self.template, self.template_options = spec.build(), spec.template.name, spec.kwargs
        else:
            given = sorted([k for k, v in sizing.items() if v is not None] + list(options))
            if given:
                raise AdtnError(f"{where}: pass either structure= or template options, not both; got {given}")
            found = template_of(structure)
            self.template = found[0].name if found else template
            self.template_options = found[1] if found else {}
        tn_axes = _structure_axes(structure)
        if list(tn_axes) != list(axes) or any(tn_axes[ax] < n for ax, n in axes.items()):
            raise ShapeError(f"{where}: structure axes {tn_axes} do not hold the layer's weight axes {axes}")
        self.pads = {ax: (n, tn_axes[ax]) for ax, n in axes.items() if tn_axes[ax] != n}
        fan_in = max(1, math.prod(axes.values()) // axes["out"])
        self.tn = compile_structure(structure, std=1.0 / math.sqrt(3 * fan_in), dtype=dtype, device=device)
        self._choices: dict[tuple, Choice] = {}
        self._weight_cache: tuple[tuple, torch.Tensor] | None = None

    def _init_bias(self, bias: bool, device: Any, dtype: torch.dtype | None) -> None:
        if bias:
            self.bias = nn.Parameter(torch.empty(self.axes["out"], device=device, dtype=dtype or self.tn.dtype))
            self._reset_bias()
        else:
            self.register_parameter("bias", None)

    # ------------------------------------------------------------------ structure and parameters
    @property
    def structure(self) -> Any:
        """The template's structure: a TensorGraph (``tn.graph``) or a DeepTN (``tn.deep``)."""
        graph = getattr(self.tn, "graph", None)
        return graph if graph is not None else self.tn.deep

    @property
    def tn_axes(self) -> dict[str, int]:
        """The network's axes: the weight's, with padded sizes where padded."""
        return _structure_axes(self.structure)

    @property
    def num_tn_params(self) -> int:
        return sum(p.numel() for p in self.tn.parameters())

    def reset_parameters(self) -> None:
        """Random init like the template's (weight std ~ 1/sqrt(3 fan_in), as nn.Linear) and the bias as nn.Linear."""
        fresh = compile_structure(self.structure, std=1.0 / math.sqrt(3 * self._fan_in), dtype=self.tn.dtype,
                                  device=self.tn.device)
        self.tn.load_state_dict(fresh.state_dict())
        self._reset_bias()

    @property
    def _fan_in(self) -> int:
        return max(1, math.prod(self.axes.values()) // self.axes["out"])

    def _reset_bias(self) -> None:
        if getattr(self, "bias", None) is not None:
            bound = 1.0 / math.sqrt(self._fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def load_node_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy ``{node: tensor}`` into the network's parameters (in place, so optimizers keep them)."""
        params = _node_tensors(self.tn)
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise AdtnError(f"{type(self).__name__}: tensors for unknown nodes {unknown}; nodes: {list(params)}")
        with torch.no_grad():
            for name, t in tensors.items():
                if tuple(t.shape) != tuple(params[name].shape):
                    raise ShapeError(f"{type(self).__name__}: node {name!r} needs shape {tuple(params[name].shape)}, "
                                     f"got {tuple(t.shape)}")
                params[name].copy_(t)

    def pad_weight(self, dense: torch.Tensor) -> torch.Tensor:
        """A weight of the layer's shape zero-padded to the network's axes."""
        if tuple(dense.shape) != tuple(self.axes.values()):
            raise ShapeError(f"{type(self).__name__}: weight of shape {tuple(dense.shape)} does not match the "
                             f"layer's {tuple(self.axes.values())}")
        if not self.pads:
            return dense
        out = dense.new_zeros(tuple(self.tn_axes.values()))
        out[tuple(slice(0, n) for n in self.axes.values())] = dense
        return out

    # ------------------------------------------------------------------ the weight and its cache
    def _cache_ok(self) -> bool:
        if self.training or _compiling():
            return False
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.tn.parameters())

    def _version(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in chain(self.tn.parameters(),
                                                                                  self.tn.buffers()))

    def _cached(self) -> bool:
        return self._cache_ok() and self._weight_cache is not None and self._weight_cache[0] == self._version()

    def dense_weight(self) -> torch.Tensor:
        """The weight rebuilt from the network and cropped; cached in eval mode until a parameter changes."""
        if self._cached():
            return self._weight_cache[1]
        w = self.tn.dense()
        if self.pads:
            w = w[tuple(slice(0, n) for n in self.axes.values())]
        if self._cache_ok():
            self._weight_cache = (self._version(), w)
        return w

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, shaped like the torch layer's ``weight``."""
        return self.dense_weight()

    # ------------------------------------------------------------------ forward mode
    def _mode(self, key: tuple) -> Choice:
        """The choice for an input shape ``key``, cached per (shape, weight cached, forward mode)."""
        cached = self._cached()
        hit = self._choices.get((key, cached, self.forward_mode))
        if hit is None:
            hit = self._decide_cached(key, cached)
        return hit

    def _decide_cached(self, key: tuple, cached: bool) -> Choice:
        """Plan outside any torch.compile trace (planning is Python, not tensor work)."""
        return _uncompiled(self._decide_and_store)(key, cached)

    def _decide_and_store(self, key: tuple, cached: bool) -> Choice:
        hit = self._choices[(key, cached, self.forward_mode)] = self._decide(key, cached)
        return hit

    def _decide(self, key: tuple, cached: bool) -> Choice:  # pragma: no cover - overridden
        raise NotImplementedError

    def _rebuild_cost(self, cached: bool) -> int:
        return 0 if cached else tn_cost(self.tn)

    # ------------------------------------------------------------------ repr, pickling, encode
    def _tn_repr(self) -> str:
        parts = [f"template={self.template!r}"]
        parts += [f"{k}={v!r}" for k, v in self.template_options.items() if k != "clip"]
        dense = math.prod(self.axes.values())
        n = self.num_tn_params
        parts.append(f"params={n:,} ({n / dense:.2%} of dense)")
        parts.append(f"forward={self.forward_mode!r}")
        parts += [f"padded {ax} {a}->{b}" for ax, (a, b) in self.pads.items()]
        choice = getattr(self, "shape_choice", None)
        if choice is not None:
            parts.append(f"shape=auto ({choice.summary()})")
        return ", ".join(parts)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_weight_cache"] = None
        return state

    @classmethod
    def _encode(cls, args: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None, template: str, *,
                rank: Any, depth: int | None, budget: float | None, tol: float | None, modes: Any, init: str,
                forward: str, fit_options: Mapping | None, options: dict[str, Any]) -> TNLayer:
        where = f"{cls.__name__}.encode"
        if init not in INITS:
            raise AdtnError(f"{where}: init must be one of {list(INITS)}, got {init!r}")
        common = {"bias": bias is not None, "template": template, "forward": forward, "device": weight.device,
                  "dtype": weight.dtype}
        options = dict(options)
        choice = _auto_shape(where, template, weight, cls.weight_axes(**args), options.pop("shape", None), budget,
                             tol, modes, options)
        if choice is not None:
            rank, budget, modes = choice.rank, None, choice.options.get("modes")
            options.update({k: v for k, v in choice.options.items() if k != "modes"})
            if template == "tt":
                options["clip"] = True
        if tol is None:
            layer = cls(**args, **common, rank=rank, depth=depth, budget=budget, modes=modes, **options)
            initialize(layer, weight, init, fit_options)
        else:
            structure, tensors = tol_structure(cls, where, args, weight, template, rank, depth, budget, tol, modes,
                                                init, options)
            layer = cls(**args, **common, structure=structure)
            layer.load_node_tensors(tensors)
        layer.shape_choice = choice
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer


def _auto_shape(where: str, template: str, weight: torch.Tensor, axes: dict[str, int], shape: Any,
                budget: float | None, tol: float | None, modes: Any, options: dict[str, Any]) -> Any:
    """The ``ShapeChoice`` for ``shape="auto"`` (None when ``shape`` is None or a shape is forced)."""
    if shape is None:
        return None
    if shape != "auto":
        raise AdtnError(f"{where}: shape must be 'auto' or None, got {shape!r}")
    if modes is not None or options.get("factors") is not None:
        return None  # modes= / factors= force the shape
    from ..shapes import SEARCHABLE, search

    if template not in SEARCHABLE:
        raise AdtnError(f"{where}: shape='auto' supports templates {list(SEARCHABLE)}, got {template!r}; "
                        "pass modes= or factors= instead")
    if budget is None or tol is not None:
        raise AdtnError(f"{where}: shape='auto' needs budget= (a fraction of the dense parameters), got "
                        f"budget={budget!r}, tol={tol!r}")
    return search(template, weight.detach(), axes, budget)


class TNLinear(TNLayer):
    """``nn.Linear`` with its weight held by a tensor network (``self.tn``).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        template: a registered template name (``adtn.templates.names()``).
        rank, depth: the template's size (whichever it takes); or ``budget``, a fraction of the
            dense parameter count (the largest uniform size within it).
        modes: ``(out_modes, in_modes)`` for templates that split axes into modes; balanced
            (a prime size zero-padded) when None.
        forward: ``"auto"`` (cheaper of rebuild-then-matmul and streaming, per input shape),
            ``"dense"`` or ``"direct"``.
        structure: a prebuilt TensorGraph / DeepTN with axes ``out``, ``in`` (instead of the options).
        **options: further template options (``t=`` for semi-tensor templates, ``factors=``, ...).
    """

    kind = "linear"
    nouns: ClassVar[dict[str, str]] = {"out": "outputs", "in": "inputs"}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        template: str = "adtn",
        *,
        rank: Any = None,
        depth: int | None = None,
        budget: float | None = None,
        modes: Any = None,
        forward: str = "auto",
        structure: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        sizing = {"rank": rank, "depth": depth, "budget": budget, "modes": modes}
        self._setup(self.weight_axes(in_features, out_features), template, structure, forward, device, dtype,
                    sizing, options)
        self._init_bias(bias, device, dtype)

    @staticmethod
    def weight_axes(in_features: int, out_features: int) -> dict[str, int]:
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise ShapeError(f"TNLinear: {name} must be a positive integer, got {n!r}")
        return {"out": int(out_features), "in": int(in_features)}

    @classmethod
    def from_linear(cls, linear: nn.Linear, template: str = "adtn", *, rank: Any = None, depth: int | None = None,
                    budget: float | None = None, tol: float | None = None, modes: Any = None, init: str = "auto",
                    forward: str = "auto", fit_options: Mapping | None = None, **options: Any) -> TNLinear:
        """A TNLinear approximating ``linear`` (see ``adtn.encode``); the bias is copied."""
        if not isinstance(linear, nn.Linear):
            raise AdtnError(f"TNLinear.from_linear: needs an nn.Linear, got {type(linear).__name__}")
        return cls._encode({"in_features": linear.in_features, "out_features": linear.out_features}, linear.weight,
                           linear.bias, template, rank=rank, depth=depth, budget=budget, tol=tol, modes=modes,
                           init=init, forward=forward, fit_options=fit_options, options=options)

    def choose_forward(self, shape: Sequence[int]) -> Choice:
        """The forward mode ``forward()`` uses for an input of this shape (and its FLOPs)."""
        return self._mode((math.prod(shape[:-1]),))

    def _decide(self, key: tuple, cached: bool) -> Choice:
        (batch,) = key
        o, i = self.out_features, self.in_features
        dense = self._rebuild_cost(cached) + 2 * batch * o * i + ACTIVATION_WEIGHT * (batch * (o + i) + o * i)
        if self.forward_mode == "dense":
            return choose("dense", dense, 0)
        return choose(self.forward_mode, dense, tn_cost(self.tn, ("in",), batch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ShapeError(f"TNLinear: input of shape {tuple(x.shape)} must end with in_features={self.in_features}")
        if self.forward_mode == "dense" or self._mode((math.prod(x.shape[:-1]),)).mode == "dense":
            return F.linear(x, self.dense_weight(), self.bias)
        if "in" in self.pads:
            x = F.pad(x, (0, self.pads["in"][1] - self.in_features))
        y = self.tn.apply(x, "in")
        if "out" in self.pads:
            y = y[..., : self.out_features]
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._tn_repr())

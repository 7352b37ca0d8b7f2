"""TNLinear, a drop-in ``nn.Linear`` whose weight is a tensor network, and ``TNLayer``, what TN layers share.

A TN layer holds its template's structure compiled as a submodule ``tn`` (a ``TNNetwork``:
a TensorGraph's ``TNModule`` or a deep ADTN's ``DeepTNModule``, used through the base's
interface only) and knows the template's name, which the engine
below does not: that is how conv layers find their fast forms. Sizes that tensorize badly
(a prime feature size) are zero-padded for templates that split axes into modes; the
layer crops the rebuilt weight, pads the input of a streamed pass, and says so in
``extra_repr``.

Forward decides per input shape whether to rebuild the weight or stream the input (``forward.py``);
the choices, like the plans below them, are kept in small LRU caches. Under ``torch.compile`` the
choice is made outside the traced graph, for ``COMPILE_BATCH`` rows (one graph then serves every
batch size).
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

from ..compiler import network_class
from ..errors import AdtnError, ShapeError
from ..network import TNNetwork, check_fed_input
from ..options import resolve
from ..plan import WORKSPACE, plain_ops
from ..templates.registry import get, template_of
from ..tolerance import tol_structure
from ..tracing import COMPILE_BATCH, LRUCache, by_handle, compiling, new_handle, trace_constant, tracing
from .chain import ChainPlan, chain_apply, chain_plan
from .forward import ACTIVATION_WEIGHT, Choice, check_mode, choose, tn_cost
from .initialize import INITS, initialize

__all__ = ["CHOICES", "TNLayer", "TNLinear", "compile_structure"]

CHOICES = 32  # forward choices kept per layer (one per input shape, weight cached or not, forward mode)


# ---------------------------------------------------------------------- structure -> module
def compile_structure(structure: Any, *, std: float, dtype: torch.dtype | None, device: Any) -> TNNetwork:
    """A TensorGraph or DeepTN compiled with a layer's random init (``std``: the dense entries' target std)."""
    return network_class(structure).for_layer(structure, std=std, dtype=dtype, device=device)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` casts to on this device type, or None when it is off."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (AttributeError, TypeError):  # torch < 2.4: per-device functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class TNLayer(nn.Module):
    """What every TN layer shares: the compiled ``tn``, padding, the weight and its eval cache,
    the forward-mode choice per input shape, and building from a dense layer."""

    kind = "linear"
    nouns: ClassVar[dict[str, str]] = {}
    # the input shape key a layer decides for while torch.compile traces (see ``_mode``)
    compile_key: ClassVar[tuple[int, ...]] = (COMPILE_BATCH,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on ``x``. Under ``torch.autocast`` the network contracts in its own dtype with
        autocast off (a chain of low-precision contractions loses accuracy, and the hand-written
        kernels keep one dtype) and the output comes in the autocast dtype, as ``nn.Linear``'s does."""
        low = autocast_dtype(x.device.type)
        if low is None:
            return self._forward(x)
        with torch.autocast(x.device.type, enabled=False):
            y = self._forward(x.to(self.tn.dtype) if x.is_floating_point() else x)
        return y.to(low)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
            self.template = found[0].name if found else None  # a user graph: no template built it
            self.template_options = found[1] if found else {}
        fan_in = max(1, math.prod(axes.values()) // axes["out"])
        self.tn = compile_structure(structure, std=1.0 / math.sqrt(3 * fan_in), dtype=dtype, device=device)
        tn_axes = self.tn.axes
        if list(tn_axes) != list(axes) or any(tn_axes[ax] < n for ax, n in axes.items()):
            raise ShapeError(f"{where}: structure axes {tn_axes} do not hold the layer's weight axes {axes}")
        self.pads = {ax: (n, tn_axes[ax]) for ax, n in axes.items() if tn_axes[ax] != n}
        self._choices: LRUCache = LRUCache(CHOICES)
        self._chains: LRUCache = LRUCache(CHOICES)
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
        """The template's structure: a TensorGraph or a DeepTN (``tn.structure``)."""
        return self.tn.structure

    @property
    def tn_axes(self) -> dict[str, int]:
        """The network's axes: the weight's, with padded sizes where padded."""
        return self.tn.axes

    @property
    def num_tn_params(self) -> int:
        return sum(p.numel() for p in self.tn.parameters())

    def reset_parameters(self) -> None:
        """Random init like the template's (weight std ~ 1/sqrt(3 fan_in), as nn.Linear) and the bias as nn.Linear."""
        fresh = type(self.tn).for_layer(self.structure, std=1.0 / math.sqrt(3 * self._fan_in), dtype=self.tn.dtype,
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
        params = self.tn.params
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
        if self.training or compiling():
            return False
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.tn.parameters())

    def _weights_version(self) -> tuple:
        """The parameters' identities and in-place versions (named so as not to shadow ``nn.Module._version``,
        which state_dict metadata records)."""
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in chain(self.tn.parameters(),
                                                                                  self.tn.buffers()))

    def _cached(self) -> bool:
        return self._cache_ok() and self._weight_cache is not None and self._weight_cache[0] == self._weights_version()

    def dense_weight(self) -> torch.Tensor:
        """The weight rebuilt from the network and cropped; cached in eval mode until a parameter changes."""
        if self._cached():
            return self._weight_cache[1]
        w = self.tn.dense()
        if self.pads:
            w = w[tuple(slice(0, n) for n in self.axes.values())]
        if self._cache_ok():
            self._weight_cache = (self._weights_version(), w)
        return w

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, shaped like the torch layer's ``weight``."""
        return self.dense_weight()

    # ------------------------------------------------------------------ forward mode
    def _mode(self, key: tuple) -> Choice:
        """The choice for an input shape ``key``, cached per (shape, weight cached, forward mode).

        While torch.compile traces, the choice is made in plain Python (``trace_constant``) for the
        nominal shape ``compile_key`` with the weight not cached: the batch may be symbolic there, and
        one graph then serves every batch size."""
        if tracing():
            return _traced_choice(self._trace_handle, self.compile_key, False, self.forward_mode)
        return _traced_choice(self._trace_handle, key, self._cached(), self.forward_mode)

    def flops(self, shape: Sequence[int]) -> tuple[int, str]:
        """(FLOPs, form) of ``forward`` on an input of ``shape``: multiply-adds x 2 over the whole
        input, in the form the layer picks now (``choose_forward``): ``"dense"`` (the dense op, plus
        the network's contraction when the weight is not cached), ``"stream"``, ``"unfold"`` or a
        conv format's fast form."""
        raise NotImplementedError

    def _rebuild_flops(self) -> int:
        return 0 if self._cached() else int(self.tn.cost().flops)

    def _decide(self, key: tuple, cached: bool) -> Choice:  # pragma: no cover - overridden
        raise NotImplementedError

    def _rebuild_cost(self, cached: bool) -> int:
        return 0 if cached else tn_cost(self.tn)

    # ------------------------------------------------------------------ repr, pickling, encode
    def _tn_repr(self) -> str:
        parts = [f"template={self.template!r}" if self.template is not None else f"graph={self.structure.name!r}"]
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
        state["_choices"], state["_chains"] = LRUCache(CHOICES), LRUCache(CHOICES)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Layers pickled before the caches were bounded get bounded ones."""
        super().__setstate__(state)
        self._trace_handle = new_handle(self)
        self._choices, self._chains = LRUCache(CHOICES), LRUCache(CHOICES)

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


def _linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with a rebuilt weight; when that weight is large, on CPU and needs a gradient,
    the weight's gradient goes to a workspace buffer (``_RebuiltLinear``)."""
    if (w.requires_grad and torch.is_grad_enabled() and w.device.type == "cpu" and not plain_ops()
            and w.numel() * w.element_size() >= WORKSPACE.min_bytes and x.dtype == w.dtype and x.numel()):
        lead = x.shape[:-1]
        y = _RebuiltLinear.apply(x.reshape(-1, x.shape[-1]), w)
        y = y.reshape(tuple(lead) + (w.shape[0],))
        return y if bias is None else y + bias
    return F.linear(x, w, bias)


class _RebuiltLinear(torch.autograd.Function):
    """``x @ w.T`` whose weight gradient (as large as the weight: 64 MiB at 4096 x 4096) is written
    to a workspace buffer; it only lives until the rebuild's backward has consumed it, and a
    fresh one would cost page faults on every step."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad @ w if ctx.needs_input_grad[0] else None
        grad_w = torch.mm(grad.t(), x, out=WORKSPACE.out(w.shape, w)) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


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
        self._trace_handle = new_handle(self)  # how trace_constant functions name this module
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
        """A TNLinear approximating ``linear`` (see ``adtn.encode``); the bias is copied.

        Under ``budget=`` the shape of a searchable template is searched (``shape="auto"``,
        ``adtn.shapes``) unless ``modes=`` / ``factors=`` / ``d=``, ``init="random"`` or
        ``shape="default"`` say otherwise; ``calibration=`` (inputs of this layer) ranks the
        searched shapes by output error."""
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
        direct = tn_cost(self.tn, ("in",), batch)
        chain = self._chain(batch)
        if chain is not None and (direct is None or chain.cost < direct):
            direct = chain.cost
        return choose(self.forward_mode, dense, direct)

    def _split_pays(self, batch: int) -> bool:
        """True when a deep ADTN should run ``apply_split`` (the last operator's one-sided gates on
        the activations) rather than rebuild the weight: never when the eval cache may hold the
        weight (it is rebuilt once, then reused), and only when it streams fewer entries
        (``DeepTNModule.split_cost``)."""
        costs = self.tn.split_cost(batch)  # None at once for a network without apply_split
        if costs is None or self.pads or plain_ops() or self._cache_ok():
            return False
        return costs[1] < costs[0]

    def _chain(self, batch: int) -> ChainPlan | None:
        """The chain executor's plan for this batch size (a TT / MPO network), None when the
        network is not a chain or the planner's steps are cheaper; cached per batch size."""
        chains = self._chains
        if batch not in chains:
            plan = None
            if self.tn.graph is not None and not self.tn.inputs:  # the chain executor reads one graph's plan
                p = self.tn.plan(("in",), batch)
                plan = chain_plan(p.signature, batch)
                if plan is not None and plan.cost >= tn_cost(self.tn, ("in",), batch):
                    plan = None
            chains[batch] = plan
        return chains.get(batch)

    def flops(self, shape: Sequence[int]) -> tuple[int, str]:
        batch = math.prod(shape[:-1])
        choice = self.choose_forward(shape)
        if choice.form == "dense":
            return self._rebuild_flops() + 2 * batch * self.out_features * self.in_features, "dense"
        chain = None if plain_ops() or batch == 0 else self._chain(batch)
        if chain is not None:
            return chain.flops, "stream"
        return int(self.tn.cost(batch=batch, axis="in").flops), "stream"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ShapeError(f"TNLinear: input of shape {tuple(x.shape)} must end with in_features={self.in_features}")
        batch = math.prod(x.shape[:-1])
        if self.forward_mode == "dense" or self._mode((batch,)).mode == "dense":
            if self.forward_mode == "auto" and self._split_pays(batch) and x.dtype == self.tn.dtype:
                y = self.tn.apply_split(x.reshape(batch, -1), _linear).reshape(tuple(x.shape[:-1]) + (-1,))
                return y if self.bias is None else y + self.bias
            return _linear(x, self.dense_weight(), self.bias)
        if "in" in self.pads:
            x = F.pad(x, (0, self.pads["in"][1] - self.in_features))
        chain = None if plain_ops() or batch == 0 else self._chain(batch)
        if chain is not None:
            ops = self.tn._operands({})
            if x.dtype != ops[0].dtype:  # the shape is checked above; axis_sizes and tn.dtype cost ~10 us a call
                check_fed_input(x, ("in",), self.tn.graph.axis_sizes, ops[0].dtype, f"graph {self.tn.graph.name!r}")
            y = chain_apply(chain, ops, x.reshape(batch, -1))
            y = y.reshape(tuple(x.shape[:-1]) + (-1,))
        else:
            y = self.tn.apply(x, "in")
        if "out" in self.pads:
            y = y[..., : self.out_features]
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._tn_repr())


@trace_constant
def _traced_choice(handle: int, key: tuple, cached: bool, mode: str) -> Choice:
    """The forward choice for ``key`` of the layer ``handle`` names, from its cache or ``_decide``;
    plain Python even while torch.compile traces (``trace_constant``), where ``mode`` (an argument,
    not read from the layer here) makes the compiled graph guard on the forward mode."""
    layer = by_handle(handle)
    hit = layer._choices.get((key, cached, mode))
    if hit is None:
        hit = layer._choices[(key, cached, mode)] = layer._decide(key, cached)
    return hit

"""``TNLayer``, what every TN layer shares.

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
batch size). Building a layer from a dense one is ``encode.py``; the layers are ``linear.py`` and
``conv.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, ClassVar

import torch
from torch import nn

from ..compiler import network_class
from ..errors import AdtnError, ShapeError
from ..network import TNNetwork
from ..options import resolve
from ..templates.registry import template_of
from ..tracing import COMPILE_BATCH, LRUCache, by_handle, compiling, new_handle, trace_constant, tracing
from .encode import encode_layer
from .forward import Choice, check_mode, tn_cost

__all__ = ["CHOICES", "TNLayer", "autocast_dtype", "compile_structure"]

CHOICES = 32  # forward choices kept per layer (one per input shape, weight cached or not, forward mode)


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
    def _encode(cls, args: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None, template: str,
                **named: Any) -> TNLayer:
        """A layer approximating a dense one's ``weight`` and ``bias`` (``encode.encode_layer``)."""
        return encode_layer(cls, args, weight, bias, template, **named)


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

"""TNConv2d and TNConv1d: drop-in ``nn.Conv2d`` / ``nn.Conv1d`` whose kernel is a tensor network.

The kernel's axes are ``out``, ``in``, ``kh``, ``kw`` (``out``, ``in``, ``kw`` for 1-D), the
torch weight layout. Forward runs one of: ``dense`` (rebuild the kernel, ``F.conv2d``); the
format's fast form (``Format.conv_form``: Tucker(-2), CP, Kronecker, ...), or
``low_rank`` for any network that splits into U (all out legs) and one core V (all in and
kernel legs): V's kh x kw conv to R channels, then U's 1x1; or, for other networks, im2col
(``F.unfold``) with the patches streamed through the network. ``"auto"``
takes the cheapest by FLOPs. Internally everything is 2-D: a 1-D conv has height 1. Unbatched
input ((C, H, W), (C, L)) runs as a batch of one, as ``nn.Conv2d`` does. ``flops(shape)`` gives
the FLOPs of the form forward runs.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import opt_einsum as oe
import torch
import torch.nn.functional as F
from torch import nn

from ..conv_ops import ConvGeometry, Work, tucker_conv, tucker_cost, unfold_input
from ..errors import AdtnError, ShapeError
from ..templates.registry import TEMPLATES
from ..tracing import COMPILE_BATCH, new_handle
from .base import TNLayer
from .forward import MEMORY_WEIGHT, Choice, choose, tn_cost

__all__ = ["TNConv1d", "TNConv2d"]

def _tuple(value: Any, n: int, name: str, where: str, low: int = 1) -> tuple[int, ...]:
    vals = (value,) * n if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if (not isinstance(vals, Sequence) or len(vals) != n
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low for v in vals)):
        raise ShapeError(f"{where}: {name} must be an int >= {low} or {n} of them, got {value!r}")
    return tuple(int(v) for v in vals)


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")  # nn.Conv2d's


class _TNConvNd(TNLayer):
    """The conv layers' shared body; subclasses set ``nd`` and the spatial axes."""

    kind = "conv"
    nd = 2
    spatial: tuple[str, ...] = ("kh", "kw")
    nouns: ClassVar[dict[str, str]] = {"out": "output channels", "in": "input channels"}
    compile_key: ClassVar[tuple[int, ...]] = (COMPILE_BATCH // 8, 32, 32)  # (N, H, W) under torch.compile

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
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
        where = type(self).__name__
        axes = self.weight_axes(in_channels, out_channels, kernel_size, groups=groups, padding_mode=padding_mode)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple(axes[ax] for ax in self.spatial)
        self.stride = _tuple(stride, self.nd, "stride", where)
        self.dilation = _tuple(dilation, self.nd, "dilation", where)
        self.padding = padding if isinstance(padding, str) else _tuple(padding, self.nd, "padding", where, low=0)
        self.groups, self.padding_mode = int(groups), padding_mode
        self._geo = self._geometry(where)
        sizing = {"rank": rank, "depth": depth, "budget": budget, "modes": modes}
        self._setup(axes, template, structure, forward, device, dtype, sizing, options)
        self._init_bias(bias, device, dtype)
        self._low_rank_spec = _low_rank_spec(self.tn.graph)  # forward reads no graph

    @classmethod
    def weight_axes(cls, in_channels: int, out_channels: int, kernel_size: Any, groups: int = 1,
                    padding_mode: str = "zeros", **_: Any) -> dict[str, int]:
        where = cls.__name__
        if padding_mode not in PADDING_MODES:
            raise AdtnError(f"{where}: padding_mode must be one of {list(PADDING_MODES)}, got {padding_mode!r}")
        for name, n in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise ShapeError(f"{where}: {name} must be a positive integer, got {n!r}")
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"{where}: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        kernel = _tuple(kernel_size, cls.nd, "kernel_size", where)
        # a grouped kernel is (out, in / groups, kh, kw), as nn.Conv2d stores it
        return {"out": int(out_channels), "in": int(in_channels) // int(groups), **dict(zip(cls.spatial, kernel))}

    def _geometry(self, where: str) -> ConvGeometry:
        if self.padding == "valid":
            pad = (0,) * self.nd
        elif self.padding == "same":
            if any(s != 1 for s in self.stride):
                raise AdtnError(f"{where}: padding='same' needs stride 1, got stride={self.stride}")
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(t % 2 for t in total):
                raise AdtnError(f"{where}: padding='same' with an even effective kernel {self.kernel_size} pads "
                                "unevenly, which is not supported; pass the padding explicitly")
            pad = tuple(t // 2 for t in total)
        elif isinstance(self.padding, str):
            raise AdtnError(f"{where}: padding must be an int, a tuple, 'valid' or 'same', got {self.padding!r}")
        else:
            pad = self.padding
        lift = (lambda t, one: (one,) + tuple(t)) if self.nd == 1 else (lambda t, one: tuple(t))
        # a non-zero padding mode pads the input first (as nn.Conv2d does), the conv itself pads nothing
        self._pre_pad = () if self.padding_mode == "zeros" else tuple(q for p in reversed(lift(pad, 0)) for q in (p, p))
        if self._pre_pad:
            pad = (0,) * self.nd
        return ConvGeometry(lift(self.kernel_size, 1), lift(self.stride, 1), lift(pad, 0), lift(self.dilation, 1))

    # ------------------------------------------------------------------ fast forms
    @property
    def tn_params(self) -> Mapping[str, torch.Tensor]:
        """The network's parameter tensors by node name (empty for a network without them)."""
        return self.tn.params

    @property
    def geometry(self) -> ConvGeometry:
        """The 2-D conv's kernel, stride, padding and dilation (a 1-D conv has height 1)."""
        return self._geo

    def as_2d(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``t`` with the virtual height of a 1-D conv inserted at ``dim`` (unchanged for 2-D)."""
        return t.unsqueeze(dim) if self.nd == 1 else t

    def _low_rank(self) -> tuple[tuple[tuple[str, ...], str, int], tuple[str, list[int], int]] | None:
        """When one core holds every in and kernel leg and the rest of the network every ``out``
        leg (legs of size 1 aside), as in the searched SVD-like shapes of chains and trees: how
        to read the network as U (O, R) and V (R, C, kh, kw), so that the conv runs as V's
        kh x kw conv to R channels and U's 1x1 (``tucker_conv``). Computed when the layer is
        made (the graph is fixed)."""
        return self._low_rank_spec

    def _low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        (u_nodes, equation, o), (nv, order_v, r) = self._low_rank()
        p = self.tn_params
        u = torch.einsum(equation, *[p[n] for n in u_nodes]).reshape(o, r)
        v = p[nv].permute(order_v).reshape((r, self.in_channels) + self.kernel_size)
        return u, self.as_2d(v, 2)

    def _format_form(self) -> Any:
        """The format's conv fast form (``Format.conv_form``) when it applies to this network, else None."""
        fmt = TEMPLATES.get(self.template) if self.template is not None else None
        form = getattr(fmt, "conv_form", None)
        return form if form is not None and form.applies(self) else None

    def _fast_form(self) -> str | None:
        """The name of this layer's fast conv form, if it has one and it is exact."""
        if self.pads:
            return None
        form = self._format_form()
        if form is not None and getattr(form, "before_low_rank", False):
            return form.name
        if self._low_rank() is not None:  # runs the same or fewer convs than the built-in forms
            return "low_rank"
        return None if form is None else form.name

    def _fast_cost(self, form: str, n: int, h: int, w: int) -> Work:
        if form == "low_rank":
            r = self._low_rank()[1][2]
            return tucker_cost(n, h, w, (r, self.in_channels) + self._geo.kernel, None, self.out_channels, self._geo)
        return self._format_form().cost(self, n, h, w)

    def _run_fast(self, form: str, x: torch.Tensor) -> torch.Tensor:
        if form == "low_rank":
            u, v = self._low_rank_factors()
            return tucker_conv(x, v, None, u, self.bias, self._geo)
        return self._format_form().run(self, x)

    def _run_unfold(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if "in" in self.pads:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pads["in"][1] - self.in_channels))
        cols, (ho, wo) = unfold_input(x, self._geo)
        cols = cols.reshape(n, ho * wo, cols.shape[2], *self.kernel_size)
        y = self.tn.apply(cols, ("in",) + self.spatial)[..., : self.out_channels]
        y = y.transpose(1, 2).reshape(n, self.out_channels, ho, wo)
        return y if self.bias is None else y + self.bias[:, None, None]

    # ------------------------------------------------------------------ forward
    def _key(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """(N, H, W) of the 2-D conv run on an input of ``shape`` (unbatched: N = 1), padding mode applied."""
        if len(shape) == self.nd + 1:
            shape = (1, *shape)
        n, _, *hw = shape
        h, w = (1, hw[0]) if self.nd == 1 else (hw[0], hw[1])
        if self._pre_pad:
            w, h = w + self._pre_pad[0] + self._pre_pad[1], h + self._pre_pad[2] + self._pre_pad[3]
        return n, h, w

    def choose_forward(self, shape: Sequence[int]) -> Choice:
        """The forward mode (and form) ``forward()`` uses for an input of this shape (N, C, H, W)."""
        return self._mode(self._key(shape))

    def flops(self, shape: Sequence[int]) -> tuple[int, str]:
        n, h, w = self._key(shape)
        form = self.choose_forward(shape).form
        if form == "dense":
            dense = self._geo.dense_cost(n, h, w, self.out_channels, self.in_channels // self.groups)
            return self._rebuild_flops() + dense.flops, "dense"
        if form == "unfold":
            ho, wo = self._geo.out_size(h, w)
            return int(self.tn.cost(batch=n * ho * wo, axis=("in",) + self.spatial).flops), "unfold"
        return int(self._fast_cost(form, n, h, w).flops), form

    def _decide(self, key: tuple, cached: bool) -> Choice:
        n, h, w = key
        dense = self._rebuild_cost(cached) + self._geo.dense_cost(n, h, w, self.out_channels,
                                                                    self.in_channels // self.groups).cost
        if self.forward_mode == "dense" or self.groups > 1:  # a grouped kernel is rebuilt for F.conv2d(groups=)
            return choose("dense", dense, 0 if self.groups == 1 else None)
        form = self._fast_form()
        if form is not None:
            return choose(self.forward_mode, dense, self._fast_cost(form, n, h, w).cost, form)
        ho, wo = self._geo.out_size(h, w)
        rows = n * ho * wo
        direct = tn_cost(self.tn, ("in",) + self.spatial, rows)
        if direct is not None:  # plus the im2col copy
            direct += MEMORY_WEIGHT * rows * math.prod(self.tn_axes.values()) // self.tn_axes["out"]
        return choose(self.forward_mode, dense, direct, "unfold")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        where = type(self).__name__
        if x.dim() not in (self.nd + 1, self.nd + 2) or x.shape[-self.nd - 1] != self.in_channels:
            dims = "L" if self.nd == 1 else "H, W"
            raise ShapeError(f"{where}: input must be (N, {self.in_channels}, {dims}) or unbatched "
                             f"({self.in_channels}, {dims}), got {tuple(x.shape)}")
        if x.dim() == self.nd + 1:  # unbatched, as nn.Conv2d takes it
            return self._forward(x.unsqueeze(0)).squeeze(0)
        x4 = x.unsqueeze(2) if self.nd == 1 else x
        if self._pre_pad:
            x4 = F.pad(x4, self._pre_pad, mode=self.padding_mode)
        n, _, h, w = x4.shape
        form = "dense" if self.forward_mode == "dense" else self._mode((n, h, w)).form
        if form == "dense":
            weight = self.as_2d(self.dense_weight(), 2)
            y = F.conv2d(x4, weight, self.bias, groups=self.groups, **self._geo.args)
        elif form == "unfold":
            y = self._run_unfold(x4)
        else:  # the fast forms run channels-last on CPU and hand back the input's layout
            y = self._run_fast(form, x4)
        return y.squeeze(2) if self.nd == 1 else y

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_low_rank_spec" not in self.__dict__:  # pickled before it was made at construction
            self._low_rank_spec = _low_rank_spec(self.tn.graph)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding != (0,) * self.nd:
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1,) * self.nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.bias is None:
            s += ", bias=False"
        return s + ", " + self._tn_repr()

    @classmethod
    def _from_conv(cls, conv: nn.Module, template: str, **kw: Any) -> _TNConvNd:
        args = {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
                "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups,
                "padding_mode": conv.padding_mode}
        cls.weight_axes(**args)  # groups and sizes are checked before anything is built
        split = ("rank", "depth", "budget", "tol", "modes", "init", "forward", "fit_options")
        named = {k: kw.pop(k, None) for k in split}
        named["init"] = named["init"] or "auto"
        named["forward"] = named["forward"] or "auto"
        return cls._encode(args, conv.weight, conv.bias, template, options=kw, **named)


def _low_rank_spec(graph: Any) -> tuple[tuple[tuple[str, ...], str, int], tuple[str, list[int], int]] | None:
    """See ``_TNConvNd._low_rank``: ((U's nodes, their einsum to (out legs, cut bonds), O),
    (V's node, its dim order, R)), or None. U's side is the core with every wide ``out`` leg
    plus the cores with no wide open leg (an HT root); V's side is the one core with every
    wide in and kernel leg; R is the product of the bonds between the sides."""
    if graph is None or graph.nodes_with_role("fixed") or graph.nodes_with_role("input"):
        return None
    wide = {ax: [leg for leg in legs if graph.leg_size(leg) > 1] for ax, legs in graph.outputs.items()}
    out_nodes = {leg.node for leg in wide["out"]}
    rest_nodes = {leg.node for ax, legs in wide.items() if ax != "out" for leg in legs}
    if len(out_nodes) != 1 or len(rest_nodes) != 1 or out_nodes == rest_nodes:
        return None
    (nv,) = rest_nodes
    u_nodes = tuple(n for n in graph.nodes if n != nv)
    cut = [(b.a, b.b) if b.b.node == nv else (b.b, b.a) for b in graph.bonds if nv in (b.a.node, b.b.node)]
    if any(a.node == nv for a, _ in cut):  # a bond of V's core with itself
        return None
    symbols = (oe.get_symbol(k) for k in itertools.count())
    letters: dict[tuple[str, str], str] = {}  # U's legs; a bond inside U shares one letter
    for b in graph.bonds:
        if nv not in (b.a.node, b.b.node):
            letters[(b.a.node, b.a.name)] = letters[(b.b.node, b.b.name)] = next(symbols)
    for n in u_nodes:
        for leg in graph.legs(n):
            if (n, leg) not in letters:
                letters[(n, leg)] = next(symbols)
    terms = ["".join(letters[(n, leg)] for leg in graph.legs(n)) for n in u_nodes]
    keep = [letters[(leg.node, leg.name)] for leg in wide["out"]] + [letters[(a.node, a.name)] for a, _ in cut]
    names = list(graph.legs(nv))
    lead = [b.name for _, b in cut] + [leg.name for ax, legs in wide.items() if ax != "out" for leg in legs]
    order_v = [names.index(n) for n in lead] + [k for k, n in enumerate(names) if n not in lead]
    o = math.prod(graph.leg_size(leg) for leg in wide["out"])
    r = math.prod(graph.leg_size(a) for a, _ in cut)
    return (u_nodes, ",".join(terms) + "->" + "".join(keep), o), (nv, order_v, r)


class TNConv2d(_TNConvNd):
    """``nn.Conv2d`` with its kernel (out, in, kh, kw) held by a tensor network (``self.tn``).

    Arguments as ``nn.Conv2d`` (a grouped kernel (out, in / groups, kh, kw) is held whole by the
    network and rebuilt for every forward), then the template
    options of ``TNLinear``: ``template``, ``rank`` / ``depth`` / ``budget``, ``modes``,
    ``forward``, ``structure``, ``**options``.
    """

    nd = 2
    spatial = ("kh", "kw")

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, template: str = "adtn", **kw: Any) -> TNConv2d:
        """A TNConv2d approximating ``conv`` (options as ``adtn.encode``); the bias is copied."""
        if not isinstance(conv, nn.Conv2d):
            raise AdtnError(f"TNConv2d.from_conv2d: needs an nn.Conv2d, got {type(conv).__name__}")
        return cls._from_conv(conv, template, **kw)


class TNConv1d(_TNConvNd):
    """``nn.Conv1d`` with its kernel (out, in, kw) held by a tensor network; see ``TNConv2d``."""

    nd = 1
    spatial = ("kw",)
    compile_key = (COMPILE_BATCH // 8, 1, 256)  # (N, 1, L) under torch.compile

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, template: str = "adtn", **kw: Any) -> TNConv1d:
        """A TNConv1d approximating ``conv`` (options as ``adtn.encode``); the bias is copied."""
        if not isinstance(conv, nn.Conv1d):
            raise AdtnError(f"TNConv1d.from_conv1d: needs an nn.Conv1d, got {type(conv).__name__}")
        return cls._from_conv(conv, template, **kw)

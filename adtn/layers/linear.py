"""TNLinear, a drop-in ``nn.Linear`` whose weight is a tensor network (``TNLayer`` in ``base.py``
holds what it shares with the conv layers).

Forward takes, per batch size, the cheaper of rebuilding the weight for one matmul and
streaming the input through the network (the chain executor of ``chain.py`` for a TT / MPO
path, the planner otherwise); a deep ADTN may instead apply its last operator's one-sided
gates to the activations (``apply_split``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdtnError, ShapeError
from ..plan import WORKSPACE, plain_ops
from ..tracing import new_handle
from .base import CHOICES, TNLayer, compile_structure
from .chain import ChainPlan, chain_apply, chain_plan
from .forward import ACTIVATION_WEIGHT, Choice, choose, tn_cost

__all__ = ["CHOICES", "TNLayer", "TNLinear", "compile_structure"]  # TNLayer and friends: their old import path


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
        if self.pads or plain_ops() or self._cache_ok():  # the cheap checks first: this runs every call
            return False
        costs = self.tn.split_cost(batch)  # None at once for a network without apply_split
        return costs is not None and costs[1] < costs[0]

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
            if x.dtype != ops[0].dtype:  # the shape is checked above; the full check costs ~10 us a call
                self.tn.check_input(x, ("in",))
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

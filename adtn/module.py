"""TNModule: a frozen TensorGraph compiled into a differentiable torch module (a ``TNNetwork``).

Parameters live in an ``nn.ParameterDict`` keyed by node name, fixed nodes are buffers
(the key scheme of ``adtn.network``).
Plans are made once per input shape (see ``adtn.plan``) and reused, the most recent
``PLANS`` of them kept; ``dense()`` contracts the whole network, ``apply(x, axis)`` contracts a
batch through it as one more node, so the planner may never form the dense tensor. Forward
reads only plain data kept at construction (axis sizes, leg sizes) and plans, so that
``torch.compile(fullgraph=True)`` traces it: under compile a plan is made outside the graph
(``trace_constant``) for a nominal batch size (``traced_batch``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import AdtnError, GraphError, ShapeError
from .graph import TensorGraph
from .initializers import InitSpec, fixed_tensor, initial_tensors
from .network import PLANS, Buffers, TNNetwork, check_fed_input, feed_axes
from .plan import Cost, Plan, execute, plan
from .tracing import by_handle, compiling, trace_constant, traced_batch

# Buffers, PLANS, check_fed_input and feed_axes moved to adtn.network; exported here too, so that
# old imports and models pickled with adtn.module.Buffers (or its old name _Buffers) still load.
__all__ = ["PLANS", "Buffers", "TNModule", "check_fed_input", "feed_axes"]

_Buffers = Buffers  # the old name, kept so that models pickled before the rename still load


class TNModule(TNNetwork):
    """A tensor network as an ``nn.Module``: ``dense()``, ``apply(x, axis)``, ``cost()``.

    Args:
        graph: the network; frozen here if it is not yet.
        init: ``"normal"`` (variance-preserving, honours node hints), another hint name,
            a dict node -> tensor, or a callable ``(name, shape) -> tensor``.
        std: target standard deviation of the dense tensor's entries for ``"normal"``.
        optimize: ``"auto"``, an opt_einsum optimizer, or ``"cotengra"``.
        memory_limit: largest intermediate (elements) the planner may form.
    """

    def __init__(
        self,
        graph: TensorGraph,
        init: InitSpec = "normal",
        *,
        std: float = 1.0,
        dtype: torch.dtype | None = None,
        device: Any = None,
        optimize: str | Any = "auto",
        memory_limit: int | None = None,
        seed: int | None = None,
    ) -> None:
        graph = graph.freeze()
        tensors = initial_tensors(graph, init, std=std, dtype=dtype, device=device, seed=seed)
        deltas = set(graph.delta_nodes())
        fixed = {n: fixed_tensor(graph, n, dtype, device) for n in graph.nodes_with_role("fixed") if n not in deltas}
        super().__init__(tensors, fixed, optimize=optimize, memory_limit=memory_limit)
        self.graph = graph
        # delta (copy) nodes are hyperedges for the planner: never operands
        self._roles = [(n, "delta" if n in deltas else graph.node(n)["role"]) for n in graph.nodes]
        self._inputs = graph.nodes_with_role("input")
        self._dense_shape = tuple(graph.axis_sizes.values())
        self._axis_sizes = dict(graph.axis_sizes)  # plain data for forward: no graph lookups while tracing
        self._axis_legs = {ax: graph.axis_shape(ax) for ax in graph.outputs}
        self._input_shapes = {n: graph.shape(n) for n in self._inputs}
        self._dense_cache: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def for_layer(cls, structure: TensorGraph, *, std: float, dtype: torch.dtype | None, device: Any) -> TNModule:
        """``structure`` with the ``"normal"`` init at dense std ``std`` (a TN layer's random init)."""
        return cls(structure, "normal", std=std, dtype=dtype, device=device)

    @property
    def structure(self) -> TensorGraph:
        return self.graph

    @property
    def inputs(self) -> list[str]:
        return list(self._inputs)

    def _owner(self) -> str:
        return f"graph {self.graph.name!r}"

    # ------------------------------------------------------------------ planning
    def plan(self, feed: Sequence[str] = (), batch: int | None = None) -> Plan:
        """The (cached) contraction plan for inputs on ``feed`` axes with this batch size."""
        return _module_plan(self._trace_handle, tuple(feed), traced_batch(batch))

    def cost(self, batch: int | None = None, axis: str | Sequence[str] | None = None) -> Cost:
        """FLOPs, largest intermediate and parameters of ``dense()`` or of ``apply`` on ``axis``."""
        feed = feed_axes(axis)
        if self._inputs and batch is None:
            batch = 1
        return self.plan(feed, batch if (feed or self._inputs) else None).cost

    def stream_plan(self, feed: Sequence[str], batch: int | None) -> Plan:
        return self.plan(feed, batch)

    def dense_plan(self) -> Plan:
        return self.plan((), None)

    # ------------------------------------------------------------------ contraction
    def node_tensors(self) -> dict[str, torch.Tensor]:
        """Every param and fixed node's current tensor, by node name."""
        out: dict[str, torch.Tensor] = {}
        for name, role in self._roles:
            if role == "param":
                out[name] = self.params[name]
            elif role == "fixed":
                out[name] = self.fixed[name]
            elif role == "delta":
                out[name] = fixed_tensor(self.graph, name, self.dtype, self.device)
        return out

    def _operands(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        ops = []
        for name, role in self._roles:
            if role == "param":
                ops.append(self.params[name])
            elif role == "fixed":
                ops.append(self.fixed[name])
            elif role == "input":
                ops.append(inputs[name])
        return ops

    def _version_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in self._tensors())

    def dense(self) -> torch.Tensor:
        """The full tensor, one dimension per output axis (in the order of ``set_outputs``).

        In eval mode without autograd the result is cached until a parameter changes.
        """
        if self._inputs:
            raise GraphError(
                f"graph {self.graph.name!r} has input nodes {self._inputs}: call the module with them, "
                "e.g. module(**{name: tensor})"
            )
        cacheable = not self.training and not torch.is_grad_enabled() and not compiling()
        if cacheable and self._dense_cache is not None and self._dense_cache[0] == self._version_key():
            return self._dense_cache[1]
        p = self.plan()
        out = execute(p.steps, self._operands({}))
        out = out.reshape(self._dense_shape)
        if cacheable:
            self._dense_cache = (self._version_key(), out)
        return out

    def apply(self, x: torch.Tensor, axis: str | Sequence[str] = "in") -> torch.Tensor:
        """Contract ``x`` (..., size of ``axis``) through the network: (..., remaining axes).

        With several axes, ``x`` ends with one dimension per axis. ``x`` is one more node
        for the planner, so the dense tensor is formed only when that is cheaper.
        """
        if self._inputs:
            raise GraphError(f"apply: graph {self.graph.name!r} has input nodes {self._inputs}; call module(**inputs)")
        feed = feed_axes(axis)
        sizes = self._axis_sizes
        check_fed_input(x, feed, sizes, self.dtype, f"graph {self.graph.name!r}")
        lead = x.shape[: x.dim() - len(feed)]
        batch = math.prod(lead)
        legs = tuple(s for ax in feed for s in self._axis_legs[ax])
        p = self.plan(feed, batch)
        ops = self._operands({}) + [x.reshape((batch,) + legs)]
        out = execute(p.steps, ops)
        rest = tuple(sizes[ax] for ax in p.out_axes)
        return out.reshape(tuple(lead) + rest)

    def forward(self, *args: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """``module()`` -> ``dense()``; ``module(x, axis="in")`` -> ``apply``; ``module(name=t)`` feeds input nodes."""
        if args:
            axis = inputs.pop("axis", "in")
            if len(args) != 1 or inputs:
                raise AdtnError("call module(x, axis=...) with one tensor, or module(**input_nodes), not both")
            return self.apply(args[0], axis)
        if not inputs:
            return self.dense()
        return self._forward_inputs(inputs)

    def _forward_inputs(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self._inputs if n not in inputs]
        unknown = [n for n in inputs if n not in self._inputs]
        if missing or unknown:
            raise GraphError(
                f"graph {self.graph.name!r} takes inputs {self._inputs}; missing {missing}, unknown {unknown}"
            )
        lead = None
        flat = {}
        for name in self._inputs:
            t = inputs[name]
            self._check_dtype(t, f"input {name!r}")
            shape = self._input_shapes[name]
            if t.dim() < len(shape) or tuple(t.shape[t.dim() - len(shape):]) != shape:
                raise ShapeError(
                    f"input node {name!r}: tensor of shape {tuple(t.shape)} must end with its legs "
                    f"{self.graph.legs(name)}, i.e. {shape}"
                )
            this_lead = tuple(t.shape[: t.dim() - len(shape)])
            if lead is not None and this_lead != lead:
                raise ShapeError(f"input node {name!r}: batch shape {this_lead} differs from {lead} of the others")
            lead = this_lead
            flat[name] = t.reshape((math.prod(this_lead),) + shape)
        batch = math.prod(lead)
        p = self.plan((), batch)
        out = execute(p.steps, self._operands(flat))
        return out.reshape(lead + self._dense_shape)

    def _check_dtype(self, t: torch.Tensor, where: str) -> None:
        if t.dtype != self.dtype:
            raise AdtnError(f"{where}: dtype {t.dtype} does not match the module's {self.dtype}; cast one of them")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without caches: plans are rebuilt on demand, a cached weight is stale data."""
        state = super().__getstate__()
        state["_dense_cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Objects pickled before the plain forward data and bounded caches existed get them here."""
        super().__setstate__(state)
        if "_axis_legs" not in self.__dict__:
            self._axis_sizes = dict(self.graph.axis_sizes)
            self._axis_legs = {ax: self.graph.axis_shape(ax) for ax in self.graph.outputs}
            self._input_shapes = {n: self.graph.shape(n) for n in self._inputs}

    def extra_repr(self) -> str:
        axes = ", ".join(f"{ax}={size}" for ax, size in self.graph.axis_sizes.items())
        return f"graph={self.graph.name!r}, nodes={len(self.graph)}, params={self.graph.num_params:,}, axes=({axes})"


@trace_constant
def _module_plan(handle: int, feed: tuple[str, ...], batch: int | None) -> Plan:
    """``TNModule.plan`` of the module ``handle`` names, in plain Python even while torch.compile
    traces (see ``trace_constant``)."""
    module = by_handle(handle)
    key = (feed, batch)
    hit = module._plans.get(key)
    if hit is None:
        hit = module._plans[key] = plan(module.graph, feed, batch, module.optimize, module.memory_limit)
    return hit

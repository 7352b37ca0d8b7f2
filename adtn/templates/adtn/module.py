"""DeepTNModule: a compiled DeepTN, decoding the weight layer by layer.

Two executors give the same numbers (tests check it):

- ``"planner"`` (the reference): every operator graph is planned by ``adtn.plan`` (once per
  shape) and run by ``adtn.plan.execute``; operator 0 contracts the boundary state into the
  first 2^Q state (at depth 1, the weight), operator m >= 1 takes the activated state as the
  input of its ``prev`` axis.
- ``"fused"`` (default when the operators are nearest-neighbour gate chains, as every
  template-built DeepTN is): the gates of a layer are grouped into windows of a few
  neighbouring legs (``schedule.windows``); each window's gates are multiplied into one small
  2^w x 2^w matrix and applied to the state in ONE matmul over the state viewed as
  (2^lo, 2^w, rest), which keeps the state's leg order, so no permutation copies are made.
  The planner's pairwise steps cost a transpose copy per step on top of the product, and on
  a 2^24 state every pass costs 10-70 ms here; a brick-wall layer of 23 gates takes 6 windows
  of 5 legs at Q = 24. Operator 0 starts from the single entry of the empty state and grows
  it window by window (legs not reached yet are still the boundary vectors), so building the
  first state costs about one pass. Backward passes are hand-written (``kernels.py``) so
  that no state is transposed into a copy.

The 2^Q x 2^Q layer matrices are never formed. The global scale multiplies one gate of the
last operator (the network is linear in it), so it costs no pass over the state.

``apply_split`` (``split.py``) skips most of the last operator when the weight meets a batch;
the kernels live in ``kernels.py``, the gate init in ``init.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ...errors import AdtnError
from ...initializers import fixed_tensor
from ...network import OLD_PREFIXES, TNNetwork, check_fed_input, feed_axes
from ...plan import Cost, Plan, execute, plain_ops, plan
from ...tracing import by_handle, trace_constant, traced_batch
from .init import GateInit, initial_gates, preserve_norm
from .kernels import apply_window, inplace_activation, window_matrix
from .operators import PREV
from .schedule import fused_schedule
from .split import LastOperatorSplit
from .structure import DeepTN

__all__ = ["DeepTNModule", "GateInit"]


class DeepTNModule(LastOperatorSplit, TNNetwork):
    """A deep ADTN as a ``TNNetwork``: ``dense()``, ``apply(x, axis)``, ``cost()``.

    Gates are ``params`` (``params.<gate>`` in the state dict, ``gates.<gate>`` before the
    network base: such state dicts and pickles still load), boundary vectors ``fixed``; the
    global ``scale`` is a buffer and, with ``learn_scale``, ``gain`` a parameter.

    Args:
        deep: the structure (``adtn.templates.adtn.build``).
        init: ``"identity"`` (identity + N(0, ``noise``) per gate; a boundary gate keeps the
            ``[:, :, 0, 0]`` slice; ``"normal"``, ``adtn.compile``'s default, means the same),
            a dict gate name -> tensor, or a callable ``(name, shape)``.
        noise: std of the noise added to the identity gates.
        std: the decoded weight's std at init, which sets the fixed scale (default
            1/sqrt(fan_in)); ignored when the DeepTN was built with an explicit ``scale``.
        checkpoint: recompute each layer m >= 1 in backward instead of keeping its states.
        executor: ``"auto"`` (fused when possible), ``"fused"`` or ``"planner"`` (see the module doc).
        window: the most neighbouring legs one fused window acts on (its matrix is 2^window wide).
        optimize, memory_limit: passed to ``adtn.plan`` for every operator.
    """

    fallback_init = "random"  # no SVD-family initialiser, and fitting a deep ADTN is slow and rarely gets close

    def __init__(
        self,
        deep: DeepTN,
        init: GateInit = "identity",
        *,
        noise: float = 0.5,
        std: float | None = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
        seed: int | None = None,
        checkpoint: bool = False,
        executor: str = "auto",
        window: int = 5,
        optimize: str | Any = "auto",
        memory_limit: int | None = None,
    ) -> None:
        if not isinstance(deep, DeepTN):
            raise AdtnError(f"DeepTNModule needs a DeepTN (adtn.templates.adtn.build), got {type(deep).__name__}")
        if isinstance(init, str) and init == "normal":
            init = "identity"
        dtype = dtype or torch.get_default_dtype()
        gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        gates = {name: t.to(device) for name, t in initial_gates(deep, init, noise, dtype, gen).items()}
        fixed = {n: fixed_tensor(op, n, dtype, device) for op in deep.operators for n in op.nodes_with_role("fixed")}
        super().__init__(gates, fixed, optimize=optimize, memory_limit=memory_limit)
        self.deep = deep
        self.checkpoint = checkpoint
        self._roles = [[(n, op.node(n)["role"]) for n in op.nodes] for op in deep.operators]
        self._scaled = deep.operators[-1].nodes_with_role("param")[0]  # the gate that carries the scale
        # plain data for forward, so that torch.compile traces no graph lookup
        self._q, self._size, self._shape = deep.q, deep.size, tuple(deep.axes.values())
        self._axis_sizes = dict(deep.axes)
        self._legs = {ax: deep.operators[0].axis_shape(ax) for ax in deep.operators[0].outputs}
        self.executor, self._windows, self._vectors = _executor_schedule(deep, executor, window)
        self.gain = nn.Parameter(torch.ones((), dtype=dtype, device=device)) if deep.learn_scale else None
        self.register_buffer("scale", torch.ones((), dtype=dtype, device=device))
        target = 1 / math.sqrt(deep.fan_in) if std is None else float(std)
        self.scale.fill_(deep.scale if deep.scale is not None else self._init_scale(target, init == "identity"))

    def _raw_std(self) -> float:
        with torch.no_grad():
            raw = self._decode(torch.ones((), dtype=self.scale.dtype, device=self.scale.device))[: self.deep.size]
            return float(raw.std()) if raw.numel() > 1 else float(raw.abs().sum())

    def _init_scale(self, target: float, renormalize: bool = False) -> float:
        """``target`` / std of the unscaled, cropped weight: the decoded weight's std at init is ``target``.

        Identity + noise gates grow the state by about sqrt(1 + 4 noise^2) each, so a deep or
        wide network overflows (or, through ReLUs, underflows) before the global scale can
        compensate. Then (``renormalize``) every gate is rescaled to preserve the state's mean
        square, ReLU's halving included, and the decode is retried: the decoded weight is the
        same up to the global scale, since it is positively homogeneous in every gate."""
        std = self._raw_std()
        if renormalize and (not math.isfinite(std) or std == 0.0):
            preserve_norm(self.deep, self.params)
            std = self._raw_std()
        if not math.isfinite(std):
            raise AdtnError(f"adtn: the decoded weight at init is not finite (depth {self.deep.depth}, Q {self.deep.q}); "
                            "lower the init noise or pass scale=")
        return target if std == 0.0 else target / std

    @classmethod
    def for_layer(cls, structure: DeepTN, *, std: float, dtype: torch.dtype | None, device: Any) -> DeepTNModule:
        """Identity + noise gates; the scale keeps ADTN's own rule (weight std 1/sqrt(fan_in)), not ``std``."""
        return cls(structure, dtype=dtype, device=device)

    @property
    def structure(self) -> DeepTN:
        return self.deep

    @property
    def gates(self) -> nn.ParameterDict:
        """The gate tensors: ``params`` (the name before the network base)."""
        return self.params

    def _owner(self) -> str:
        return "the weight"

    # ------------------------------------------------------------------ planning
    def plan(self, layer: int, feed: Sequence[str] = (), batch: int | None = None) -> Plan:
        """The (cached) plan of operator ``layer`` with inputs on ``feed`` axes."""
        return _operator_plan(self._trace_handle, layer, tuple(feed), traced_batch(batch))

    def cost(self, batch: int | None = None, axis: str | Sequence[str] | None = None) -> Cost:
        """FLOPs, largest intermediate and parameters of ``dense()`` or of ``apply`` on ``axis``."""
        feed = feed_axes(axis)
        if feed and self._streams(feed):
            p = self.plan(0, feed, batch or 1)
            return Cost(p.cost.flops, p.cost.largest_intermediate, self.deep.num_params, p.cost.path, p.cost.optimizer)
        n = 2**self.deep.q
        if self.executor == "fused":
            flops, largest = self._fused_flops(), n
        else:
            plans = [self.plan(m, (PREV,) if m else (), 1 if m else None) for m in range(self.deep.depth)]
            flops = sum(p.cost.flops for p in plans)
            largest = max(p.cost.largest_intermediate for p in plans)
        flops += n * (self.deep.depth - 1)  # the activations
        if feed:
            rows = math.prod(self.deep.axes[ax] for ax in feed)
            flops += 2 * (batch or 1) * self.deep.size
            largest = max(largest, (batch or 1) * (self.deep.size // rows))
        return Cost(int(flops), int(largest), self.deep.num_params, (), f"deep:{self.deep.depth} layers")

    def stream_plan(self, feed: Sequence[str], batch: int | None) -> Plan | None:
        """Operator 0's plan with the batch on ``feed`` when ``apply`` streams (depth 1, exact axes)."""
        feed = tuple(feed)
        return self.plan(0, feed, batch) if self._streams(feed) else None

    def dense_traffic(self) -> int:
        """Each layer passes over the 2^Q state once, reading and writing it."""
        return 2 * self.deep.depth * 2**self.deep.q

    @torch.no_grad()
    def rescale_(self, factor: float) -> None:
        """The fixed global scale takes ``factor``."""
        self.scale.mul_(factor)

    def _fused_flops(self) -> int:
        """Multiply-adds x 2 of the fused windows' matmuls (the small window matrices not counted)."""
        flops = 0
        for layer, wins in enumerate(self._windows):
            e = self.deep.q if layer else 0
            for lo, hi, _ in wins:
                e = max(e, lo)
                flops += 2 * 2 ** (e + hi - lo)
                e = max(e, hi)
        return flops

    # ------------------------------------------------------------------ contraction
    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def effective_scale(self) -> torch.Tensor:
        """The global scale: the fixed buffer, times the learnt gain with ``learn_scale``."""
        return self.scale if self.gain is None else self.scale * self.gain

    def _operands(self, layer: int, scale: torch.Tensor | None) -> list[torch.Tensor]:
        ops = []
        for name, role in self._roles[layer]:
            if role == "param":
                t = self.params[name]
                ops.append(t * scale if scale is not None and name == self._scaled else t)
            elif role == "fixed":
                ops.append(self.fixed[name])
        return ops

    def _activate(self, state: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        act, slope = self.deep.activation, self.deep.negative_slope
        if act is None:
            return state
        if (inplace and (act == "relu" or slope > 0) and state.requires_grad and torch.is_grad_enabled()
                and not plain_ops()):
            return inplace_activation(state, None if act == "relu" else slope)
        if act == "relu":
            return F.relu(state, inplace=inplace)
        return F.leaky_relu(state, slope, inplace=inplace and slope > 0)

    def _planned(self, layer: int, state: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
        """Operator ``layer`` through the planner: the flat state in, the flat new state out."""
        if not layer:
            return execute(self.plan(0).steps, self._operands(0, scale)).reshape(-1)
        state = state.reshape((1,) + (2,) * self._q)
        return execute(self.plan(layer, (PREV,), 1).steps, self._operands(layer, scale) + [state]).reshape(-1)

    def _fused(self, layer: int, state: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
        """Operator ``layer`` window by window (see the module doc); same result as ``_planned``."""
        tensors = {name: self.params[name] for name, role in self._roles[layer] if role == "param"}
        if scale is not None:
            tensors[self._scaled] = tensors[self._scaled] * scale
        psi, e = (state, self._q) if layer else (self.scale.new_ones(1), 0)
        for lo, hi, gates in self._windows[layer]:
            m = window_matrix([(tensors[name], a - lo) for name, a in gates], hi - lo)
            if lo > e:  # legs e..lo-1 stay boundary vectors under this window: store them first
                psi, e = torch.kron(psi.reshape(-1), self._boundary(e, lo)), lo
            psi, e = apply_window(psi, e, m, lo, hi, self._boundary(e, hi) if hi > e else None)
        return psi

    def _boundary(self, start: int, stop: int) -> torch.Tensor:
        """The product of the boundary vectors of legs start..stop-1 (fixed nodes, else [1, 0])."""
        out = None
        for j in range(start, stop):
            name = self._vectors.get(j)
            v = self.fixed[name] if name else self.scale.new_tensor([1.0, 0.0])
            out = v if out is None else torch.kron(out, v)
        return out

    def _decode(self, scale: torch.Tensor) -> torch.Tensor:
        """The 2^Q decoded entries (flat), the last operator's gate multiplied by ``scale``."""
        depth, fused = self.deep.depth, self.executor == "fused"
        run = self._fused if fused else self._planned
        ckpt = self.checkpoint and torch.is_grad_enabled()
        state = run(0, None, scale if depth == 1 else None)
        for m in range(1, depth):
            s = scale if m == depth - 1 else None
            state = self._activate(state, inplace=fused and not ckpt)
            state = _checkpoint(run, m, state, s, use_reentrant=False) if ckpt else run(m, state, s)
        return state.reshape(-1)

    def dense(self) -> torch.Tensor:
        """The weight, shaped like the axes: the first prod(axes) decoded entries, times the scale."""
        flat = self._decode(self.effective_scale())
        if flat.numel() != self._size:
            flat = flat[: self._size]
        return flat.reshape(self._shape)

    def _streams(self, feed: Sequence[str]) -> bool:
        """True when ``apply`` can stream the input through the gates (depth 1, axes split into legs)."""
        return self.deep.depth == 1 and self.deep.exact and all(ax in self._legs for ax in feed)

    def apply(self, x: torch.Tensor, axis: str | Sequence[str] = "in") -> torch.Tensor:
        """Contract ``x`` (..., size of ``axis``) with the weight: (..., remaining axes).

        At depth 1 (axes powers of two) the planner streams ``x`` through the gates without
        forming the weight; otherwise the weight is decoded and contracted once.
        """
        feed = feed_axes(axis)
        sizes = self.deep.axes
        check_fed_input(x, feed, sizes, self.dtype, "the weight")
        lead = tuple(x.shape[: x.dim() - len(feed)])
        rest = tuple(n for ax, n in sizes.items() if ax not in feed)
        if self._streams(feed):
            batch = math.prod(lead)
            legs = tuple(s for ax in feed for s in self._legs[ax])
            p = self.plan(0, feed, batch)
            out = execute(p.steps, self._operands(0, self.effective_scale()) + [x.reshape((batch,) + legs)])
            return out.reshape(lead + rest)
        w = self.dense()
        dims = [list(sizes).index(ax) for ax in feed]
        return torch.tensordot(x, w, dims=(list(range(len(lead), x.dim())), dims)).reshape(lead + rest)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Modules pickled by older versions: the gates move from ``gates`` to ``params``
        (``OLD_PREFIXES``), and the plain forward data is made here."""
        modules = state.get("_modules", {})
        for old, new in OLD_PREFIXES.items():
            old, new = old.rstrip("."), new.rstrip(".")
            if old in modules and new not in modules:
                modules = type(modules)((new if k == old else k, v) for k, v in modules.items())
        state["_modules"] = modules
        super().__setstate__(state)
        if "_legs" not in self.__dict__:
            self._q, self._size, self._shape = self.deep.q, self.deep.size, tuple(self.deep.axes.values())
            self._legs = {ax: self.deep.operators[0].axis_shape(ax) for ax in self.deep.operators[0].outputs}
        if "_axis_sizes" not in self.__dict__:
            self._axis_sizes = dict(self.deep.axes)

    def extra_repr(self) -> str:
        d = self.deep
        axes = ", ".join(f"{ax}={n}" for ax, n in d.axes.items())
        act = d.activation if d.activation is not None else "linear"
        scale = "learnt gain" if d.learn_scale else "fixed"
        return (f"axes=({axes}), q={d.q}, depth={d.depth}, activation={act}, params={d.num_params:,}, "
                f"scale={scale}{', checkpoint=True' if self.checkpoint else ''}")


@trace_constant
def _operator_plan(handle: int, layer: int, feed: tuple[str, ...], batch: int | None) -> Plan:
    """``DeepTNModule.plan`` of the module ``handle`` names, in plain Python even while torch.compile
    traces (see ``trace_constant``)."""
    module = by_handle(handle)
    key = (layer, feed, batch)
    hit = module._plans.get(key)
    if hit is None:
        d = module.deep
        hit = module._plans[key] = plan(d.operators[layer], feed, batch, module.optimize, module.memory_limit)
    return hit


def _executor_schedule(deep: DeepTN, executor: str, width: int) -> tuple[str, list, dict[int, str]]:
    """(executor, windows per layer, boundary node per leg) for the executor option."""
    if executor not in ("auto", "fused", "planner"):
        raise AdtnError(f"DeepTNModule: unknown executor {executor!r}; valid: ['auto', 'fused', 'planner']")
    if isinstance(width, bool) or not isinstance(width, int) or width < 2:
        raise AdtnError(f"DeepTNModule: window must be an integer >= 2 (legs per fused pass), got {width!r}")
    if executor == "planner":
        return "planner", [], {}
    schedule = fused_schedule(deep, width)
    if isinstance(schedule, str):
        if executor == "fused":
            raise AdtnError(f"DeepTNModule: executor 'fused' cannot run this DeepTN: {schedule}")
        return "planner", [], {}
    return "fused", *schedule

"""DeepTNModule: a compiled DeepTN, decoding the weight layer by layer.

Two executors give the same numbers (tests check it):

- ``"planner"`` (the reference): every operator graph is planned by ``adtn.plan`` (once per
  shape) and run by ``adtn.plan.execute``; operator 0 contracts the boundary state into the
  first 2^Q state (at depth 1, the weight), operator m >= 1 takes the activated state as the
  input of its ``prev`` axis.
- ``"fused"`` (default when the operators are nearest-neighbour gate chains, as every
  template-built DeepTN is): the gates of a layer are grouped into windows of a few
  neighbouring legs (``adtn.deep.windows``); each window's gates are multiplied into one small
  2^w x 2^w matrix and applied to the state in ONE matmul over the state viewed as
  (2^lo, 2^w, rest), which keeps the state's leg order, so no permutation copies are made.
  The planner's pairwise steps cost a transpose copy per step on top of the product, and on
  a 2^24 state every pass costs 10-70 ms here; a brick-wall layer of 23 gates takes 6 windows
  of 5 legs at Q = 24. Operator 0 starts from the single entry of the empty state and grows
  it window by window (legs not reached yet are still the boundary vectors), so building the
  first state costs about one pass. Backward passes are hand-written (``_RowMatmul``,
  ``_MiddleMatmul``) so that no state is transposed into a copy.

The 2^Q x 2^Q layer matrices are never formed. The global scale multiplies one gate of the
last operator (the network is linear in it), so it costs no pass over the state.

``apply_split(x)`` computes ``x @ dense().T`` for a weight (out, in) without applying all of
the last operator to the state: its gates on the output legs only and on the input legs only
act on the (much smaller) batch instead, and only the gates that cross the out | in boundary
(and those before them) pass over the state; ``TNLinear`` runs it at depth >= 2 when it
streams fewer entries. On CPU, the states and their gradients live in reusable workspace
buffers (``adtn.plan.WORKSPACE``): a fresh 64 MiB tensor is page-faulted anew every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .deep import PREV, DeepTN, fused_schedule, trace_gates, windows
from .errors import AdtnError, ShapeError
from .initializers import fixed_tensor, identity_like
from .module import PLANS, Buffers, check_fed_input, feed_axes
from .plan import WORKSPACE, Cost, Plan, execute, plain_ops, plan
from .tracing import LRUCache, by_handle, new_handle, trace_constant, traced_batch

__all__ = ["DeepTNModule", "GateInit"]

GateInit = str | Mapping[str, torch.Tensor] | Callable[[str, tuple[int, ...]], torch.Tensor]


class DeepTNModule(nn.Module):
    """A deep ADTN as an ``nn.Module``: ``dense()``, ``apply(x, axis)``, ``cost()``.

    Args:
        deep: the structure (``adtn.templates.adtn.build``).
        init: ``"identity"`` (identity + N(0, ``noise``) per gate; a boundary gate keeps the
            ``[:, :, 0, 0]`` slice), a dict gate name -> tensor, or a callable ``(name, shape)``.
        noise: std of the noise added to the identity gates.
        std: the decoded weight's std at init, which sets the fixed scale (default
            1/sqrt(fan_in)); ignored when the DeepTN was built with an explicit ``scale``.
        checkpoint: recompute each layer m >= 1 in backward instead of keeping its states.
        executor: ``"auto"`` (fused when possible), ``"fused"`` or ``"planner"`` (see the module doc).
        window: the most neighbouring legs one fused window acts on (its matrix is 2^window wide).
        optimize, memory_limit: passed to ``adtn.plan`` for every operator.
    """

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
        super().__init__()
        self._trace_handle = new_handle(self)  # how trace_constant functions name this module
        if not isinstance(deep, DeepTN):
            raise AdtnError(f"DeepTNModule needs a DeepTN (adtn.templates.adtn.build), got {type(deep).__name__}")
        dtype = dtype or torch.get_default_dtype()
        self.deep = deep
        self.checkpoint = checkpoint
        self.optimize = optimize
        self.memory_limit = memory_limit
        gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        self.gates = nn.ParameterDict(
            {name: nn.Parameter(t.to(device)) for name, t in _initial_gates(deep, init, noise, dtype, gen).items()}
        )
        fixed = {n: fixed_tensor(op, n, dtype, device) for op in deep.operators for n in op.nodes_with_role("fixed")}
        self.fixed = Buffers(fixed)
        self._roles = [[(n, op.node(n)["role"]) for n in op.nodes] for op in deep.operators]
        self._scaled = deep.operators[-1].nodes_with_role("param")[0]  # the gate that carries the scale
        self._plans: LRUCache = LRUCache(PLANS)
        # plain data for forward, so that torch.compile traces no graph lookup
        self._q, self._size, self._shape = deep.q, deep.size, tuple(deep.axes.values())
        self._legs = {ax: deep.operators[0].axis_shape(ax) for ax in deep.operators[0].outputs}
        self.executor, self._windows, self._vectors = _fused_schedule(deep, executor, window)
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
            _preserve_norm(self.deep, self.gates)
            std = self._raw_std()
        if not math.isfinite(std):
            raise AdtnError(f"adtn: the decoded weight at init is not finite (depth {self.deep.depth}, Q {self.deep.q}); "
                            "lower the init noise or pass scale=")
        return target if std == 0.0 else target / std

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
                t = self.gates[name]
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
            return _InplaceActivation.apply(state, None if act == "relu" else slope)
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
        tensors = {name: self.gates[name] for name, role in self._roles[layer] if role == "param"}
        if scale is not None:
            tensors[self._scaled] = tensors[self._scaled] * scale
        psi, e = (state, self._q) if layer else (self.scale.new_ones(1), 0)
        for lo, hi, gates in self._windows[layer]:
            m = _window_matrix([(tensors[name], a - lo) for name, a in gates], hi - lo)
            if lo > e:  # legs e..lo-1 stay boundary vectors under this window: store them first
                psi, e = torch.kron(psi.reshape(-1), self._boundary(e, lo)), lo
            psi, e = _apply_window(psi, e, m, lo, hi, self._boundary(e, hi) if hi > e else None)
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

    # ------------------------------------------------------------------ the last operator split
    def _split(self) -> tuple[list, list, list, int] | None:
        """The last operator's gates split for ``apply_split``: windows of the gates applied to the
        state (``mid``), of those acting on the output legs only and on the input legs only (legs
        counted from the side's first), and the number of output legs; None when not applicable
        (depth 1, the planner executor, a padded weight, or not two axes). Cached."""
        if "_split_cache" in self.__dict__:
            return self._split_cache
        result, d = None, self.deep
        last = d.operators[-1]
        axes = [ax for ax in last.outputs if ax != PREV]
        if self.executor == "fused" and d.depth >= 2 and d.exact and len(axes) == 2:
            q, q_out = d.q, len(last.axis_shape(axes[0]))
            gates = trace_gates(last, d.depth - 1, q)
            if not isinstance(gates, str):
                # a gate crossing the out | in boundary acts on the state; so does every gate that
                # must run before one that does (it shares a leg with it and comes earlier)
                mid, legs = set(), set()
                for k in range(len(gates) - 1, -1, -1):
                    _, a, b = gates[k]
                    if a < q_out <= b or {a, b} & legs:
                        mid.add(k)
                        legs |= {a, b}
                parts = ([g for k, g in enumerate(gates) if k in mid],
                         [g for k, g in enumerate(gates) if k not in mid and g[2] < q_out],
                         [(n, a - q_out, b - q_out) for k, (n, a, b) in enumerate(gates) if k not in mid and a >= q_out])
                width = max((hi - lo for wins in self._windows for lo, hi, _ in wins), default=5)
                result = tuple(
                    [(lo, hi, [(part[k][0], part[k][1]) for k in idx])
                     for lo, hi, idx in windows([(a, b) for _, a, b in part], n, width)]
                    for part, n in zip(parts, (q, q_out, q - q_out))
                ) + (q_out,)
        self.__dict__["_split_cache"] = result
        return result

    def split_cost(self, batch: int) -> tuple[int, int] | None:
        """(entries streamed by ``dense()``'s last operator, by ``apply_split``'s), passes times
        entries; None when the split does not apply."""
        split = self._split()
        if split is None:
            return None
        mid, outs, ins, q_out = split
        q = self.deep.q
        full = len(self._windows[-1]) * 2**q
        return full, len(mid) * 2**q + batch * (len(outs) * 2**q_out + len(ins) * 2 ** (q - q_out))

    def apply_split(self, x: torch.Tensor, linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                    ) -> torch.Tensor:
        """``x`` (batch, in) @ W.T without applying all of the last operator to the 2^Q state.

        The last operator's gates that act on the output legs only form a matrix A, those on
        the input legs only B, the rest (gates crossing the boundary and those before them) M,
        so W = A · mat(M s) · B^T: ``x`` goes through B's windows (transposed, reversed) and the
        product through A's, each a pass over batch x 2^(legs) entries, and only M's windows
        pass over the state. Same numbers as ``x @ dense().T`` up to rounding; ``linear(z, w)``
        computes ``z @ w.T`` (default ``F.linear``).
        """
        mid, outs, ins, q_out = self._split()
        q, depth = self._q, self.deep.depth
        run = self._fused
        ckpt = self.checkpoint and torch.is_grad_enabled()
        state = run(0, None, None)
        for m in range(1, depth):
            state = self._activate(state, inplace=not ckpt)
            if m < depth - 1:
                state = _checkpoint(run, m, state, None, use_reentrant=False) if ckpt else run(m, state, None)
        tensors = {name: self.gates[name] for name, role in self._roles[depth - 1] if role == "param"}
        tensors[self._scaled] = tensors[self._scaled] * self.effective_scale()

        def matrix(lo: int, hi: int, gates: list) -> torch.Tensor:
            return _window_matrix([(tensors[name], a - lo) for name, a in gates], hi - lo)

        for lo, hi, gates in mid:
            state, _ = _apply_window(state, q, matrix(lo, hi, gates), lo, hi, None)
        z = x
        for lo, hi, gates in reversed(ins):
            z = _apply_side(z, matrix(lo, hi, gates).T, lo, hi, q - q_out)
        w = state.reshape(2**q_out, 2 ** (q - q_out))
        y = linear(z, w) if linear is not None else F.linear(z, w)
        for lo, hi, gates in outs:
            y = _apply_side(y, matrix(lo, hi, gates), lo, hi, q_out)
        return y

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

    def forward(self, x: torch.Tensor | None = None, axis: str | Sequence[str] = "in") -> torch.Tensor:
        """``module()`` -> ``dense()``; ``module(x, axis="in")`` -> ``apply``."""
        return self.dense() if x is None else self.apply(x, axis)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Modules pickled before the bounded plan cache and the plain forward data get them here."""
        super().__setstate__(state)
        self._trace_handle = new_handle(self)
        if not isinstance(self._plans, LRUCache):
            self._plans = LRUCache(PLANS)
        if "_legs" not in self.__dict__:
            self._q, self._size, self._shape = self.deep.q, self.deep.size, tuple(self.deep.axes.values())
            self._legs = {ax: self.deep.operators[0].axis_shape(ax) for ax in self.deep.operators[0].outputs}

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


def _initial_gates(
    deep: DeepTN, init: GateInit, noise: float, dtype: torch.dtype, gen: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """One tensor per gate node: identity + noise (boundary gates: its [:, :, 0, 0] slice), or given."""
    out: dict[str, torch.Tensor] = {}
    names = [n for _, n in deep.gates()]
    if isinstance(init, Mapping):
        unknown = sorted(set(init) - set(names))
        missing = [n for n in names if n not in init]
        if unknown or missing:
            raise AdtnError(f"adtn init: unknown gates {unknown[:4]}, missing gates {missing[:4]}; "
                            f"gates are named like {names[:3]}")
    elif not callable(init) and init != "identity":
        raise AdtnError(f"adtn init: must be 'identity', a dict gate -> tensor or a callable (name, shape), got {init!r}")
    for m, name in deep.gates():
        shape = deep.operators[m].shape(name)
        if isinstance(init, Mapping) or callable(init):
            t = torch.as_tensor(init[name] if isinstance(init, Mapping) else init(name, shape))
            if tuple(t.shape) != shape:
                raise ShapeError(f"adtn init for gate {name!r}: expected shape {shape}, got {tuple(t.shape)}")
            out[name] = t.detach().to(dtype).clone()
            continue
        full = identity_like((2, 2, 2, 2), torch.float64) + noise * torch.randn(2, 2, 2, 2, dtype=torch.float64,
                                                                               generator=gen)
        out[name] = (full if len(shape) == 4 else full[:, :, 0, 0]).to(dtype).contiguous()
    return out


def _preserve_norm(deep: DeepTN, gates: nn.ParameterDict) -> None:
    """Rescale full gates in place to Frobenius norm 2 (the identity's: mean square preserved on
    a random state), times the ReLU gain sqrt(2 / (1 + slope^2)) spread over a layer's gates."""
    gain = {"relu": 2.0, "leaky_relu": 2.0 / (1.0 + deep.negative_slope**2)}.get(deep.activation, 1.0)
    with torch.no_grad():
        for m, op in enumerate(deep.operators):
            names = op.nodes_with_role("param")
            full = [n for n in names if gates[n].dim() == 4]
            per_gate = gain ** (0.5 / max(len(full), 1)) if m < deep.depth - 1 else 1.0
            for n in full:
                gates[n].mul_(2.0 * per_gate / gates[n].norm().clamp_min(1e-12))


def _fused_schedule(deep: DeepTN, executor: str, width: int) -> tuple[str, list, dict[int, str]]:
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


def _window_matrix(gates: Sequence[tuple[torch.Tensor, int]], width: int) -> torch.Tensor:
    """The 2^width x 2^width matrix of ``gates`` (tensor, first leg in the window), applied in order.

    A boundary gate (its 2x2 slice [:, :, 0, 0]) becomes the 4x4 map that reads only input 00.
    Element-wise products and sums, not BLAS: these matrices are tiny, and a BLAS call on them
    mostly waits for its thread pool.
    """
    m = None
    for g, k in gates:
        g = F.pad(g.reshape(4, 1), (0, 3)) if g.dim() == 2 else g.reshape(4, 4)
        if m is None:
            m = torch.eye(2**width, dtype=g.dtype, device=g.device)
        m = (g.reshape(1, 4, 4, 1) * m.reshape(2**k, 1, 4, -1)).sum(2)  # g on output legs k, k+1
    return m.reshape(2**width, 2**width)


def _apply_window(
    psi: torch.Tensor, e: int, m: torch.Tensor, lo: int, hi: int, fresh: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Apply the window matrix ``m`` on legs [lo, hi) of ``psi`` (legs [0, e) stored, row-major).

    Legs e..hi-1 (when hi > e) still hold the boundary vectors, whose product ``fresh`` is
    contracted into ``m``'s columns, so ``psi`` grows to hi legs. One matmul, leg order kept;
    the result is a fresh contiguous tensor (not a view, so an in-place activation is cheap).
    """
    n = hi - lo
    if hi > e:
        m = (m.reshape(2**n, 2 ** (e - lo), 2 ** (hi - e)) * fresh).sum(-1)
        return _RowMatmul.apply(psi.reshape(2**lo, 2 ** (e - lo)), m), hi
    post = 2 ** (e - hi)
    if post == 1:
        return _RowMatmul.apply(psi.reshape(2**lo, 2**n), m), e
    return _MiddleMatmul.apply(m, psi.reshape(2**lo, 2**n, post)), e


def _apply_side(x: torch.Tensor, m: torch.Tensor, lo: int, hi: int, legs: int) -> torch.Tensor:
    """``m`` applied on legs [lo, hi) of every row of ``x`` (batch, 2^legs)."""
    pre, n, post = x.shape[0] * 2**lo, 2 ** (hi - lo), 2 ** (legs - hi)
    if post == 1:
        return _RowMatmul.apply(x.reshape(pre, n), m).reshape(x.shape)
    return _MiddleMatmul.apply(m, x.reshape(pre, n, post)).reshape(x.shape)


def _chunks(rows: int, entries: int) -> int:
    """How many chunks to split ``rows`` into so that each partial product holds <= _CHUNK entries."""
    return max(1, min(rows // _ROWS, _CHUNK // entries))


class _RowMatmul(torch.autograd.Function):
    """``s @ m.T`` for a tall s (rows, n_in): the window on the last legs, or a growing state.

    The gradient of the small ``m`` is a sum over row chunks of batched products: one GEMM with
    an inner dimension of 2^20 runs far below the memory bandwidth.
    """

    @staticmethod
    def forward(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.mm(s, m.T, out=WORKSPACE.out((s.shape[0], m.shape[0]), s))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        s, m = ctx.saved_tensors
        grad = grad.contiguous()
        grad_s = torch.mm(grad, m, out=WORKSPACE.out(s.shape, s)) if ctx.needs_input_grad[0] else None
        grad_m = None
        if ctx.needs_input_grad[1]:
            rows, n_out, n_in = s.shape[0], m.shape[0], m.shape[1]
            c = _chunks(rows, n_out * n_in)
            grad_m = torch.bmm(grad.reshape(c, rows // c, n_out).transpose(1, 2), s.reshape(c, rows // c, n_in)).sum(0)
        return grad_s, grad_m


class _MiddleMatmul(torch.autograd.Function):
    """``m @ s[p]`` for every p of s (pre, n, post), with a backward that copies no state.

    With ``m`` requiring grad, torch.matmul folds s into a transposed copy and its backward
    transposes again; here every product is a bmm against the expanded ``m`` (no copy), and
    the gradient of ``m`` is a sum of batched products with a transposed operand (strided
    BLAS), in chunks that keep the (chunk, n, n) partial products small.
    """

    @staticmethod
    def forward(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out = WORKSPACE.out((s.shape[0], m.shape[0], s.shape[2]), s)
        return torch.bmm(m.expand(s.shape[0], -1, -1), s, out=out)  # torch.matmul may fold s into a transposed copy

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        m, s = ctx.saved_tensors
        grad = grad.contiguous()
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = torch.bmm(m.T.contiguous().expand(s.shape[0], -1, -1), grad, out=WORKSPACE.out(s.shape, s))
        grad_m = None
        if ctx.needs_input_grad[0]:
            pre, n, post = s.shape
            if post >= n:  # sum over p of (n x post) @ (post x n): batched, transposed operand
                chunk = max(1, min(pre, _CHUNK // (n * n)))
                parts = (torch.bmm(grad[k : k + chunk], s[k : k + chunk].transpose(1, 2)).sum(0)
                         for k in range(0, pre, chunk))
            else:  # thin products: regroup a cache-sized chunk as (n, chunk * post) and use one GEMM
                chunk = max(1, min(pre, _CHUNK // (n * post)))
                parts = (grad[k : k + chunk].transpose(0, 1).reshape(n, -1)
                         @ s[k : k + chunk].transpose(0, 1).reshape(n, -1).T for k in range(0, pre, chunk))
            for part in parts:
                grad_m = part if grad_m is None else grad_m + part
        return grad_m, grad_s


class _InplaceActivation(torch.autograd.Function):
    """ReLU (``slope`` None) or leaky ReLU applied in place to a fused state, with the input
    gradient written to a workspace buffer (a fresh 64 MiB one costs page faults on every step)."""

    @staticmethod
    def forward(ctx: Any, state: torch.Tensor, slope: float | None) -> torch.Tensor:
        if slope is None:
            state.clamp_min_(0)
        else:
            F.leaky_relu(state, slope, inplace=True)
        ctx.mark_dirty(state)
        ctx.save_for_backward(state)
        ctx.slope = slope
        return state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        buf = WORKSPACE.empty(out.shape, out)
        if ctx.slope is None:
            return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=buf), None
        return torch.ops.aten.leaky_relu_backward.grad_input(grad, out, ctx.slope, True, grad_input=buf), None


_ROWS = 1 << 10  # the fewest rows per chunk in _RowMatmul's backward
_CHUNK = 1 << 18  # entries of one chunk's partial products (or regrouped copies) in the backward passes

"""How a TN layer runs its forward pass: rebuild the weight, or stream the input through the cores.

``choose`` compares costs derived from the planner's plans (never tensor values): ``dense``
costs one contraction of the network (nothing when the eval-mode weight is cached) plus the
dense op; ``direct`` costs the contraction with the input batch as one more node. A cost is
FLOPs plus a weight per element moved (``MEMORY_WEIGHT``, ``ACTIVATION_WEIGHT``).

A network that is a path of cores (TT / MPO and the other path-shaped formats) streams
through ``chain_apply`` instead of the planner's pairwise steps when that is cheaper: the
batch keeps a layout in which every step is one (batched) product on a view, so no step
transposes it, and neighbouring cores are merged where fewer, larger products win
(``chain_plan``). Its backward is hand-written, with the large intermediates in reusable
workspace buffers (``adtn.plan.WORKSPACE``). A 4096 x 4096 TT layer of rank 16 at batch 128
runs forward + backward in about half of tensorly-torch's time.

Conv formats with a known fast form run as a sequence of small convolutions instead of
rebuilding the kernel (METHODS.md sections 4 and 5), each exact and checked against
``F.conv2d`` with the rebuilt kernel in the tests:

- Tucker-2: 1x1 conv C -> R_in, kh x kw conv R_in -> R_out, 1x1 conv R_out -> O;
- CP: 1x1 conv C -> R, depthwise kh x kw (the kh x 1 and 1 x kw pair fused), 1x1 conv R -> O;
- Kronecker (GKPD): fold one factor's input channels into the batch, conv with the other
  factor's terms stacked, then one conv that sums the R terms, channels interleaved
  f = f1 * F2 + f2. Exact when A and B are not both wider than 1 in the same spatial dim.

On CPU the fast forms run channels-last inside (oneDNN's small and depthwise convs are
1.2-3x faster so) and hand back the input's layout; a first 1x1 conv over all channels reads
a default-layout batch as one batched product with a transposed operand (``pointwise_in``),
so the input is not copied into channels-last first.
Under ``torch.compile`` or a ``torch.func`` transform every form runs plain torch ops.

All conv helpers work in 2-D; a 1-D conv is a 2-D one of height 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import AdtnError
from ..plan import BATCH, WORKSPACE, Plan, Signature, plain_ops

__all__ = [
    "ACTIVATION_WEIGHT",
    "DIRECT_MARGIN",
    "MEMORY_WEIGHT",
    "MODES",
    "STATE_WEIGHT",
    "ChainPlan",
    "Choice",
    "ConvGeometry",
    "chain_apply",
    "chain_plan",
    "check_mode",
    "choose",
    "cp_conv",
    "cp_cost",
    "kronecker_conv",
    "kronecker_cost",
    "kronecker_exact",
    "plan_cost",
    "tn_cost",
    "traffic",
    "tucker_conv",
    "tucker_cost",
    "unfold_input",
]

Mode = Literal["auto", "dense", "direct"]
MODES = ("auto", "dense", "direct")
# "auto" compares costs in FLOP-equivalents: FLOPs plus a weight per tensor element moved.
# A planned contraction moves its operands and intermediates through tensordot's permute
# copies, which are strided and slow (a 4096 x 4096 TT rebuild spends most of its time in
# the last one): MEMORY_WEIGHT per element, calibrated on 2 CPU threads against measured
# dense / streamed TT layers (batch 1 to 4096, ranks 4 to 32). Dense ops and conv stages
# stream contiguous activations: ACTIVATION_WEIGHT per element read or written.
MEMORY_WEIGHT = 400
ACTIVATION_WEIGHT = 20
# A chain executor's step is a product that streams its state once; it costs the larger of its
# FLOPs and STATE_WEIGHT per state element read or written, so thin products (a bond or mode
# below ~64) are memory-bound (calibrated on 2 CPU threads against measured 4096 x 4096 TT
# layers, ranks 4 to 64, batch 16 to 4096: merging neighbouring cores into fewer, larger
# products wins even at more FLOPs).
STATE_WEIGHT = 128
# direct must be this much cheaper than dense to be picked (dense is one well-tuned kernel)
DIRECT_MARGIN = 1.0


def check_mode(mode: str, where: str) -> str:
    """``mode`` if it is one of ``MODES``, else an AdtnError listing them."""
    if mode not in MODES:
        raise AdtnError(f"{where}: forward must be one of {list(MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class Choice:
    """The forward mode picked for one input shape, and the costs (FLOP-equivalents) that decided it.

    ``mode`` is ``"dense"`` or ``"direct"``; ``form`` says how direct runs (``"stream"``: the
    input contracted through the network; ``"unfold"``: im2col then stream; ``"tucker2"``,
    ``"cp"``, ``"kronecker"``: a conv format's fast form) and is ``"dense"`` for dense.
    """

    mode: str
    form: str
    dense_cost: int
    direct_cost: int


def choose(mode: str, dense_cost: int, direct_cost: int | None, form: str = "stream") -> Choice:
    """Resolve ``"auto"`` by cost; ``direct_cost`` None means direct cannot stream (dense it is)."""
    if direct_cost is None:
        mode, direct_cost = "dense", -1
    elif mode == "auto":
        mode = "direct" if direct_cost * DIRECT_MARGIN < dense_cost else "dense"
    return Choice(mode, form if mode == "direct" else "dense", int(dense_cost), int(direct_cost))


def traffic(plan: Plan) -> int:
    """Elements read and written by a plan's pairwise steps (operands plus results), from its path."""
    sig = plan.signature
    size = sig.size_dict
    terms = [s for _, s in sig.operands]
    total = 0
    for positions in plan.cost.path:
        picked = [terms[i] for i in positions]
        for i in sorted(positions, reverse=True):
            terms.pop(i)
        keep = "".join(terms) + sig.output
        result = "".join(dict.fromkeys(c for t in picked for c in t if c in keep))
        total += sum(math.prod(size[c] for c in t) for t in picked) + math.prod(size[c] for c in result)
        terms.append(result)
    return total


def plan_cost(plan: Plan) -> int:
    """FLOPs plus ``MEMORY_WEIGHT`` per element moved."""
    return int(plan.cost.flops) + MEMORY_WEIGHT * traffic(plan)


def tn_cost(tn: Any, feed: Sequence[str] = (), batch: int | None = None) -> int | None:
    """Cost of ``tn.dense()`` (no ``feed``) or of streaming a batch on ``feed``; None when ``tn``
    cannot stream (a deep ADTN past depth 1, or one whose axes are padded to 2^Q)."""
    feed = tuple(feed)
    deep = getattr(tn, "deep", None)
    if deep is None:
        return plan_cost(tn.plan(feed, batch if feed else None))
    if not feed:
        return int(tn.cost().flops) + MEMORY_WEIGHT * 2 * deep.depth * 2**deep.q
    first = deep.operators[0]
    if deep.depth > 1 or not deep.exact or not all(ax in first.outputs for ax in feed):
        return None
    return plan_cost(tn.plan(0, feed, batch))


# ---------------------------------------------------------------------- chains (TT / MPO)
@dataclass(frozen=True)
class ChainStep:
    """One step of a chain executor: cores ``first..last`` (chain order) merged into a (P, Q) matrix.

    ``equation`` (torch.einsum letters; None when the single core is already in order) builds
    the merged tensor; the state before the step is (batch * lead, Q, tail), after it
    (batch * lead, P, tail).
    """

    cores: tuple[int, ...]
    equation: str | None
    p: int
    q: int
    lead: int
    tail: int


@dataclass(frozen=True)
class ChainPlan:
    """How ``chain_apply`` streams a batch through a chain of cores (a TT-matrix / MPO).

    The state keeps the layout (batch, I_1 .. I_{g-1}, [I_g, r_g], O_{g+1} .. O_G): each step
    multiplies the merged matrix of group g (rows (l_g, O_g), columns (I_g, r_g)) into the
    middle dimensions, which leaves the next group's (I_{g-1}, r_{g-1}) in the middle, so no
    step transposes the state (the planner's pairwise steps copy it through a permute each
    time). Groups of neighbouring cores are merged when that cuts the cost (dynamic
    programming over the chain, both orientations).
    """

    steps: tuple[ChainStep, ...]  # in execution order: the last group first
    in_perm: tuple[int, ...] | None  # permutes (batch, fed legs) into chain order
    in_legs: tuple[int, ...]
    out_perm: tuple[int, ...] | None  # permutes (batch, output legs in chain order) into the signature's
    out_legs: tuple[int, ...]  # output leg sizes in chain order
    flops: int
    cost: int


def _letters(symbols: Sequence[str]) -> dict[str, str]:
    return {c: chr(ord("a") + k) if k < 26 else chr(ord("A") + k - 26) for k, c in enumerate(dict.fromkeys(symbols))}


def _chain_order(sig: Signature) -> tuple[list[int], str, str] | None:
    """The cores of a chain signature as operand indices along the path, the fed and the output
    symbols; None when the network is not a chain (a path of cores, each open leg fed or kept)."""
    ops = [s for _, s in sig.operands]
    fed = [k for k, (name, _) in enumerate(sig.operands) if name.startswith(BATCH)]
    if len(fed) != 1 or fed[0] != len(ops) - 1 or not ops[-1] or not sig.output or ops[-1][0] != sig.output[0]:
        return None
    cores = list(range(len(ops) - 1))
    if not cores:
        return None
    batch, fed_syms, out_syms = sig.output[0], ops[-1][1:], sig.output[1:]
    where: dict[str, list[int]] = {}
    for k in cores:
        if len(set(ops[k])) != len(ops[k]) or batch in ops[k]:
            return None
        for c in ops[k]:
            where.setdefault(c, []).append(k)
    neighbours: dict[int, set[int]] = {k: set() for k in cores}
    for c, at in where.items():
        if c in fed_syms or c in out_syms:
            if len(at) != 1 or (c in fed_syms and c in out_syms):
                return None
        elif len(at) == 2:
            neighbours[at[0]].add(at[1])
            neighbours[at[1]].add(at[0])
        else:
            return None  # a hyperedge or a summed-out leg
    if (set(fed_syms) | set(out_syms)) - set(where) or len(set(fed_syms)) != len(fed_syms):
        return None
    if sum(map(len, neighbours.values())) != 2 * (len(cores) - 1) or any(len(v) > 2 for v in neighbours.values()):
        return None
    order = [next(k for k in cores if len(neighbours[k]) <= 1)]
    while len(order) < len(cores):
        nxt = [k for k in neighbours[order[-1]] if k not in order]
        if not nxt:
            return None  # not connected
        order.append(nxt[0])
    return order, fed_syms, out_syms


def chain_plan(sig: Signature, batch: int, max_core: int = 1 << 22) -> ChainPlan | None:
    """The cheapest ``ChainPlan`` for a signature with one fed operand, or None when it is not a chain.

    Cost per step: the larger of its FLOPs and ``STATE_WEIGHT`` per state element read or
    written; plus the merges of cores (``MEMORY_WEIGHT`` per merged entry) and ``MEMORY_WEIGHT``
    per element when the input or output legs must be permuted. Merged matrices hold at most
    ``max_core`` entries.
    """
    found = _chain_order(sig)
    if found is None:
        return None
    order, fed_syms, out_syms = found
    plans = [_orient(sig, cores, fed_syms, out_syms, batch, max_core) for cores in (order, order[::-1])]
    return min((p for p in plans if p is not None), key=lambda p: p.cost, default=None)


def _orient(sig: Signature, cores: list[int], fed_syms: str, out_syms: str, batch: int,
            max_core: int) -> ChainPlan | None:
    """``chain_plan`` for one orientation of the chain (``cores`` left to right): the grouping
    of neighbouring cores by dynamic programming over the chain."""
    size = sig.size_dict
    ops = [s for _, s in sig.operands]
    n = len(cores)
    ins = [sorted((c for c in ops[k] if c in fed_syms), key=fed_syms.index) for k in cores]
    outs = [sorted((c for c in ops[k] if c in out_syms), key=out_syms.index) for k in cores]
    bonds = [[]] + [[c for c in ops[cores[m]] if c in ops[cores[m + 1]]] for m in range(n - 1)] + [[]]
    dim_i = [math.prod(size[c] for c in x) for x in ins]
    dim_o = [math.prod(size[c] for c in x) for x in outs]
    dim_b = [math.prod(size[c] for c in x) for x in bonds]

    def group(j: int, k: int) -> tuple[int, int, ChainStep] | None:
        """Cores j..k (inclusive) as one step: (cost, FLOPs, step), None when the merge is too big."""
        p = dim_b[j] * math.prod(dim_o[j : k + 1])
        q = math.prod(dim_i[j : k + 1]) * dim_b[k + 1]
        if p * q > max_core and k > j:
            return None
        lead, tail = math.prod(dim_i[:j]), math.prod(dim_o[k + 1 :])
        rows = batch * lead * tail
        flops = 2 * rows * p * q
        merge = sum(2 * dim_b[j] * math.prod(dim_o[j : m + 1]) * math.prod(dim_i[j : m + 1]) * dim_b[m]
                    * dim_b[m + 1] for m in range(j + 1, k + 1))
        target = bonds[j] + [c for x in outs[j : k + 1] for c in x] + [c for x in ins[j : k + 1] for c in x]
        target += bonds[k + 1]
        terms = [ops[cores[m]] for m in range(j, k + 1)]
        equation = None
        if k > j or terms[0] != "".join(target):
            letters = _letters([c for t in terms for c in t])
            equation = ",".join("".join(letters[c] for c in t) for t in terms) + "->" + "".join(
                letters[c] for c in target)
        cost = max(flops, STATE_WEIGHT * rows * (p + q)) + merge + MEMORY_WEIGHT * p * q
        return cost, flops, ChainStep(tuple(cores[j : k + 1]), equation, p, q, lead, tail)

    table: list[tuple[int, int, list[ChainStep]] | None] = [(0, 0, [])] + [None] * n
    for k in range(n):
        for j in range(k + 1):
            prev, cur = table[j], group(j, k)
            if prev is None or cur is None:
                continue
            cost, flops = prev[0] + cur[0], prev[1] + cur[1]
            if table[k + 1] is None or cost < table[k + 1][0]:
                table[k + 1] = (cost, flops, prev[2] + [cur[2]])
    if table[n] is None:
        return None
    cost, flops, steps = table[n]
    chain_in = [c for x in ins for c in x]
    chain_out = [c for x in outs for c in x]
    in_perm = tuple([0] + [1 + fed_syms.index(c) for c in chain_in])
    out_perm = tuple([0] + [1 + chain_out.index(c) for c in out_syms])
    in_perm = None if in_perm == tuple(range(len(in_perm))) else in_perm
    out_perm = None if out_perm == tuple(range(len(out_perm))) else out_perm
    cost += MEMORY_WEIGHT * batch * (math.prod(dim_i) * (in_perm is not None) + math.prod(dim_o) * (out_perm is not None))
    return ChainPlan(tuple(steps[::-1]), in_perm, tuple(size[c] for c in fed_syms), out_perm,
                     tuple(size[c] for c in chain_out), int(flops), int(cost))


def chain_apply(plan: ChainPlan, operands: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Stream ``x`` (batch, fed entries) through the chain's cores (``operands`` in signature
    order, the fed operand left out): (batch, output entries), exact, with a hand-written
    backward (``_ChainMatmul``) whose large intermediates come from the workspace."""
    batch = x.shape[0]
    if plan.in_perm is not None:
        x = x.reshape((batch,) + plan.in_legs).permute(plan.in_perm)
    mats, dims = [], []
    for step in plan.steps:
        terms = [operands[k] for k in step.cores]
        merged = torch.einsum(step.equation, *terms) if step.equation is not None else terms[0]
        mats.append(merged.reshape(step.p, step.q))
        dims.append((batch * step.lead, step.p, step.q, step.tail))
    y = _ChainMatmul.apply(x.reshape(dims[0][0], dims[0][2]), tuple(dims), *mats)
    if plan.out_perm is not None:
        y = y.reshape((batch,) + plan.out_legs).permute(plan.out_perm)
    return y.reshape(batch, -1)


def _chain_forward(s: torch.Tensor, m: torch.Tensor, dims: tuple[int, int, int, int], last: bool) -> torch.Tensor:
    rows, p, q, tail = dims
    shape = (rows, p) if tail == 1 else (p, tail) if rows == 1 else (rows, p, tail)
    out = torch.empty(shape, dtype=s.dtype, device=s.device) if last else WORKSPACE.empty(shape, s)
    if tail == 1:
        return torch.mm(s.reshape(rows, q), m.t(), out=out)
    if rows == 1:
        return torch.mm(m, s.reshape(q, tail), out=out)
    return torch.bmm(m.expand(rows, p, q), s.reshape(rows, q, tail), out=out)


def _sum_of_products(g: torch.Tensor, s: torch.Tensor, chunk_entries: int = 1 << 18) -> torch.Tensor:
    """sum_r g[r] @ s[r].T for g (rows, P, T), s (rows, Q, T): batched products in chunks whose
    partial (chunk, P, Q) products hold about ``chunk_entries`` (addbmm loops over the rows one
    GEMM at a time, 10x slower with many small ones)."""
    rows, p, q = g.shape[0], g.shape[1], s.shape[1]
    chunk = max(1, min(rows, chunk_entries // (p * q)))
    out = None
    for k in range(0, rows, chunk):
        part = torch.bmm(g[k : k + chunk], s[k : k + chunk].transpose(1, 2)).sum(0)
        out = part if out is None else out.add_(part)
    return out


class _ChainMatmul(torch.autograd.Function):
    """The steps of ``chain_apply`` on the state: ``x`` (rows, Q) then, per step, the merged
    matrix applied to the middle dimensions; ``dims`` holds (rows, P, Q, tail) per step.

    The intermediate states are saved for the backward pass in workspace buffers (released when
    the graph is), and the backward's state gradients live in workspace buffers too: a 4096 x
    4096 TT layer at batch 128 makes 32 MiB states, each a fresh mmap (page faults on every
    page) otherwise."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dims: tuple, *mats: torch.Tensor) -> torch.Tensor:
        states, s = [], x
        for k, (m, d) in enumerate(zip(mats, dims)):
            states.append(s)
            s = _chain_forward(s, m, d, k == len(mats) - 1)
        ctx.save_for_backward(*states, *mats)
        ctx.dims = dims
        return s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        saved = ctx.saved_tensors
        n = len(ctx.dims)
        states, mats = saved[:n], saved[n:]
        grads: list[torch.Tensor | None] = [None] * n
        g = grad.contiguous()
        for k in range(n - 1, -1, -1):
            rows, p, q, tail = ctx.dims[k]
            s, m = states[k], mats[k]
            if tail == 1:
                g2 = g.reshape(rows, p)
                if ctx.needs_input_grad[2 + k]:
                    grads[k] = torch.mm(g2.t(), s.reshape(rows, q))
            elif rows == 1:
                g2 = g.reshape(p, tail)
                if ctx.needs_input_grad[2 + k]:
                    grads[k] = torch.mm(g2, s.reshape(q, tail).t())
            else:
                g2 = g.reshape(rows, p, tail)
                if ctx.needs_input_grad[2 + k]:
                    grads[k] = _sum_of_products(g2, s.reshape(rows, q, tail))
            if k == 0 and not ctx.needs_input_grad[0]:
                g = None
                break
            shape = (rows, q) if tail == 1 else (q, tail) if rows == 1 else (rows, q, tail)
            out = torch.empty(shape, dtype=g2.dtype, device=g2.device) if k == 0 else WORKSPACE.empty(shape, g2)
            if tail == 1:
                g = torch.mm(g2, m, out=out)
            elif rows == 1:
                g = torch.mm(m.t(), g2, out=out)
            else:
                g = torch.bmm(m.t().contiguous().expand(rows, q, p), g2, out=out)
        return (g, None, *grads)


# ---------------------------------------------------------------------- conv geometry
@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution's shape facts: kernel, stride, padding, dilation (pairs) and sizes."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip((h, w), self.kernel, self.stride, self.padding, self.dilation)
        )

    def dense_cost(self, n: int, h: int, w: int, out_ch: int, in_ch: int) -> int:
        """FLOPs of the dense conv plus ``ACTIVATION_WEIGHT`` per input and output element."""
        ho, wo = self.out_size(h, w)
        flops = 2 * n * ho * wo * out_ch * in_ch * self.kernel[0] * self.kernel[1]
        return flops + ACTIVATION_WEIGHT * n * (h * w * in_ch + ho * wo * out_ch)

    def part(self, dims: Sequence[bool]) -> dict[str, tuple[int, int]]:
        """conv2d arguments applying stride, padding and dilation only in the dims flagged True."""
        return {
            "stride": tuple(s if on else 1 for s, on in zip(self.stride, dims)),
            "padding": tuple(p if on else 0 for p, on in zip(self.padding, dims)),
            "dilation": tuple(d if on else 1 for d, on in zip(self.dilation, dims)),
        }

    @property
    def args(self) -> dict[str, tuple[int, int]]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}


def unfold_input(x: torch.Tensor, geo: ConvGeometry) -> tuple[torch.Tensor, tuple[int, int]]:
    """im2col: (N, C, H, W) -> (N, L, C, kh, kw) patches and the output size (Ho, Wo)."""
    n, c, h, w = x.shape
    cols = F.unfold(x, geo.kernel, dilation=geo.dilation, padding=geo.padding, stride=geo.stride)
    ho, wo = geo.out_size(h, w)
    return cols.transpose(1, 2).reshape(n, ho * wo, c, *geo.kernel), (ho, wo)


# ---------------------------------------------------------------------- 1x1 convs across layouts
def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _cpu_nchw(x: torch.Tensor) -> bool:
    """True for a CPU batch not stored channels-last: the fast conv forms run channels-last inside
    (oneDNN's small and depthwise convs run 1.2-3x faster so) and hand back torch's default layout,
    as ``nn.Conv2d`` does; a channels-last batch stays channels-last throughout."""
    return x.device.type == "cpu" and not _channels_last(x) and not plain_ops()


def _to_inner(x: torch.Tensor) -> torch.Tensor:
    """The inner (channels-last on CPU) layout of an input that enters a kxk conv directly."""
    return x.contiguous(memory_format=torch.channels_last) if _cpu_nchw(x) else x


def _from_inner(y: torch.Tensor, nchw: bool) -> torch.Tensor:
    return y.contiguous() if nchw else y


def pointwise_in(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv with weight ``u.T`` (``u`` is (C, R)); from a CPU NCHW batch, its result comes
    channels-last straight from one batched product (``_PointwiseToCL``), with no layout copy."""
    if _cpu_nchw(x):
        return _PointwiseToCL.apply(x.contiguous(), u)
    return F.conv2d(x, u.t()[:, :, None, None])


def pointwise_out(z: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, nchw: bool) -> torch.Tensor:
    """The 1x1 conv with weight ``u`` (O, R) (+ bias) on a channels-last ``z``, in torch's default
    layout when ``nchw``. (oneDNN's conv then one layout copy beats a batched product written
    straight into the default layout, whose backward needs products with a transposed operand.)"""
    return _from_inner(F.conv2d(z, u[:, :, None, None], bias), nchw)


class _PointwiseToCL(torch.autograd.Function):
    """x (N, C, H, W) contiguous, u (C, R) -> the 1x1 conv, (N, R, H, W) channels-last: per sample
    (HW, C) @ (C, R) with a transposed operand, so neither layout is copied."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x3 = x.reshape(n, c, h * w)
        ctx.save_for_backward(x3, u)
        ctx.hw = (h, w)
        z = torch.bmm(x3.transpose(1, 2), u.expand(n, c, u.shape[1]))
        return z.view(n, h, w, -1).permute(0, 3, 1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x3, u = ctx.saved_tensors
        n, c, hw = x3.shape
        g3 = grad.permute(0, 2, 3, 1).reshape(n, hw, u.shape[1]).contiguous()  # a view when grad is channels-last
        gx = gu = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(u.expand(n, c, u.shape[1]), g3.transpose(1, 2)).view(n, c, *ctx.hw)
        if ctx.needs_input_grad[1]:
            gu = torch.bmm(x3, g3).sum(0)
        return gx, gu


# ---------------------------------------------------------------------- Tucker(-2)
def tucker_conv(
    x: torch.Tensor,
    core: torch.Tensor,
    u_in: torch.Tensor | None,
    u_out: torch.Tensor | None,
    bias: torch.Tensor | None,
    geo: ConvGeometry,
) -> torch.Tensor:
    """Tucker-2 as convolutions: 1x1 (u_in^T), core kh x kw, 1x1 (u_out); a missing factor is skipped.

    ``core`` is (R_out, R_in, kh, kw); ``u_in`` (C, R_in) and ``u_out`` (O, R_out). On CPU the
    convs run channels-last and the result comes back in the input's layout.
    """
    nchw = _cpu_nchw(x)
    x = pointwise_in(x, u_in) if u_in is not None else _to_inner(x)
    if u_out is None:
        return _from_inner(F.conv2d(x, core, bias, **geo.args), nchw)
    x = F.conv2d(x, core, None, **geo.args)
    return pointwise_out(x, u_out, bias, nchw)


def tucker_cost(n: int, h: int, w: int, core: Sequence[int], c: int | None, o: int | None, geo: ConvGeometry) -> int:
    """Cost of ``tucker_conv``: core shape (R_out, R_in, kh, kw); c / o None when not factored."""
    r_out, r_in, kh, kw = core
    ho, wo = geo.out_size(h, w)
    flops = 2 * n * ho * wo * r_out * r_in * kh * kw
    moved = n * (h * w * r_in + ho * wo * r_out)
    if c is not None:
        flops += 2 * n * h * w * c * r_in
        moved += n * h * w * (c + r_in)
    if o is not None:
        flops += 2 * n * ho * wo * r_out * o
        moved += n * ho * wo * (r_out + o)
    return flops + ACTIVATION_WEIGHT * moved


# ---------------------------------------------------------------------- CP
def cp_conv(
    x: torch.Tensor,
    u_out: torch.Tensor,
    u_in: torch.Tensor,
    u_kh: torch.Tensor | None,
    u_kw: torch.Tensor | None,
    bias: torch.Tensor | None,
    geo: ConvGeometry,
) -> torch.Tensor:
    """CP as convolutions: 1x1 C -> R, depthwise kh x kw, 1x1 R -> O.

    Factors are (size, R). The kh x 1 and 1 x kw depthwise convs of the textbook form are run
    as one depthwise conv whose kernel is their outer product (the same map; PyTorch's
    depthwise kernels favour square ones: 2.5x faster than the pair on 2 CPU threads). A
    missing spatial factor (a 1-D conv's height) counts as ones.
    """
    rank = u_in.shape[1]
    kh = u_kh.t()[:, :, None] if u_kh is not None else u_in.new_ones(rank, 1, 1)
    kw = u_kw.t()[:, None, :] if u_kw is not None else u_in.new_ones(rank, 1, 1)
    nchw = _cpu_nchw(x)
    x = pointwise_in(x, u_in)
    x = F.conv2d(x, (kh * kw)[:, None], groups=rank, **geo.args)
    return pointwise_out(x, u_out, bias, nchw)


def cp_cost(n: int, h: int, w: int, c: int, o: int, rank: int, geo: ConvGeometry) -> int:
    """Cost of ``cp_conv``."""
    ho, wo = geo.out_size(h, w)
    kh, kw = geo.kernel
    flops = 2 * n * rank * (h * w * c + ho * wo * kh * kw + ho * wo * o)
    moved = n * (h * w * (c + 2 * rank) + ho * wo * (2 * rank + o))
    return flops + ACTIVATION_WEIGHT * moved


# ---------------------------------------------------------------------- Kronecker (GKPD)
def kronecker_exact(a_shape: Sequence[int], b_shape: Sequence[int]) -> bool:
    """True when no spatial dim has both factors wider than 1 (shapes (F, C, kh, kw))."""
    return all(a == 1 or b == 1 for a, b in zip(a_shape[2:], b_shape[2:]))


def _kron_order(a_shape: Sequence[int], b_shape: Sequence[int], n: int, h: int, w: int, geo: ConvGeometry):
    """The cheaper order of ``kronecker_conv``: (FLOPs per term, elements between the convs per
    term, a_first, dims where the first conv takes stride / padding / dilation)."""
    best = None
    for a_first in (True, False):
        first, second = (a_shape, b_shape) if a_first else (b_shape, a_shape)
        f1, c1, kh1, kw1 = first
        f2, c2, kh2, kw2 = second
        # the first conv gets stride/padding/dilation in the dims where it is wide (or both are 1)
        dims = tuple(k1 > 1 or k2 == 1 for k1, k2 in zip(first[2:], second[2:]))
        h1, w1 = ConvGeometry((kh1, kw1), **geo.part(dims)).out_size(h, w)
        h2, w2 = ConvGeometry((kh2, kw2), **geo.part(tuple(not d for d in dims))).out_size(h1, w1)
        flops = 2 * n * h1 * w1 * c2 * f1 * c1 * kh1 * kw1 + 2 * n * h2 * w2 * f1 * f2 * c2 * kh2 * kw2
        middle = n * h1 * w1 * c2 * f1
        if best is None or flops < best[0]:
            best = (flops, middle, a_first, dims)
    return best


def kronecker_cost(a_shape: Sequence[int], b_shape: Sequence[int], rank: int, n: int, h: int, w: int,
                   geo: ConvGeometry) -> int:
    """Cost of ``kronecker_conv`` in its cheaper order; shapes are (F_k, C_k, kh_k, kw_k)."""
    flops, middle, _, _ = _kron_order(a_shape, b_shape, n, h, w, geo)
    ho, wo = geo.out_size(h, w)
    c, o = a_shape[1] * b_shape[1], a_shape[0] * b_shape[0]
    return rank * flops + ACTIVATION_WEIGHT * (n * (h * w * c + ho * wo * o) + 2 * rank * middle)


def _pointwise(args: dict[str, tuple[int, int]]) -> bool:
    return args["stride"] == (1, 1) and args["padding"] == (0, 0)


def kronecker_conv(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry
) -> torch.Tensor:
    """Conv with the kernel sum_r A_r (x) B_r without forming it; a (R, F1, C1, kh1, kw1), b (R, F2, C2, ...).

    The factor run first sees the input with the other factor's input channels folded into
    the batch, all R terms stacked as output channels; the second conv takes (r, c) as its
    input channels, so it also sums the R terms. Output channel f = f1 * F2 + f2. On CPU the
    convs run channels-last (a first 1x1 one over all channels via ``pointwise_in``)
    and the result comes back in the input's layout.
    """
    if not kronecker_exact(a.shape[1:], b.shape[1:]):
        raise AdtnError(
            f"kronecker_conv: A {tuple(a.shape[1:])} and B {tuple(b.shape[1:])} are both wider than 1 in one "
            "spatial dim; the sequence of convolutions would not be exact: rebuild the kernel instead"
        )
    n, _, h, w = x.shape
    _, _, a_first, dims = _kron_order(a.shape[1:], b.shape[1:], n, h, w, geo)
    first, second = (a, b) if a_first else (b, a)
    r, f1, c1, kh1, kw1 = first.shape
    _, f2, c2, kh2, kw2 = second.shape
    args1, args2 = geo.part(dims), geo.part(tuple(not d for d in dims))
    nchw = _cpu_nchw(x)
    if c2 == 1 and kh1 == kw1 == 1 and _pointwise(args1):  # a 1x1 conv over all channels
        z = pointwise_in(x, first.reshape(r * f1, c1).t())
    else:
        # input channel c = ca * Cb + cb with (ca, cb) the channels of (A, B)
        xs = _to_inner(x).reshape(n, a.shape[2], b.shape[2], h, w)
        if a_first:
            xs = xs.transpose(1, 2)  # fold B's channels into the batch: (N, C_b, C_a, H, W)
        z = F.conv2d(xs.reshape(n * c2, c1, h, w), first.reshape(r * f1, c1, kh1, kw1), **args1)
    h1, w1 = z.shape[-2:]
    if f1 > 1 or c2 > 1:
        z = z.reshape(n, c2, r, f1, h1, w1).permute(0, 3, 2, 1, 4, 5).reshape(n * f1, r * c2, h1, w1)
    if f1 == 1 and kh2 == kw2 == 1 and _pointwise(args2):  # a 1x1 conv giving all channels
        return pointwise_out(z, second.transpose(0, 1).reshape(f2, r * c2), bias, nchw)
    y = F.conv2d(z, second.transpose(0, 1).reshape(f2, r * c2, kh2, kw2), **args2)
    h2, w2 = y.shape[-2:]
    y = y.reshape(n, f1, f2, h2, w2)
    if not a_first:
        y = y.transpose(1, 2)  # (N, F_a, F_b, ...): f = fa * F_b + fb
    y = _from_inner(y.reshape(n, f1 * f2, h2, w2), nchw)
    return y if bias is None else y + bias[:, None, None]

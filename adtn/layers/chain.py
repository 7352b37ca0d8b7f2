"""Streaming a batch through a path of cores (TT / MPO and other path-shaped formats).

A network that is a path of cores (TT / MPO and the other path-shaped formats) streams
through ``chain_apply`` instead of the planner's pairwise steps when that is cheaper: the
batch keeps a layout in which every step is one (batched) product on a view, so no step
transposes it, and neighbouring cores are merged where fewer, larger products win
(``chain_plan``). Its backward is hand-written, with the large intermediates in reusable
workspace buffers (``adtn.plan.WORKSPACE``). A 4096 x 4096 TT layer of rank 16 at batch 128
runs forward + backward in about half of tensorly-torch's time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..plan import BATCH, WORKSPACE, Signature
from .forward import MEMORY_WEIGHT, STATE_WEIGHT

__all__ = ["ChainPlan", "ChainStep", "chain_apply", "chain_plan"]

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


def _sum_of_products(g: torch.Tensor, s: torch.Tensor, chunk_entries: int = 1 << 21) -> torch.Tensor:
    """sum_r g[r] @ s[r].T for g (rows, P, T), s (rows, Q, T): batched products in chunks whose
    partial (chunk, P, Q) products hold about ``chunk_entries`` (addbmm loops over the rows one
    GEMM at a time, 10x slower with many small ones). Few large chunks: each chunk is three
    parallel ops, and on a machine whose cores other processes share every parallel op waits for
    a descheduled thread (4096 x 4096 TT at batch 128, 2 threads, one core busy elsewhere: 1 << 18
    made 32 chunks, 590 ms a step; 1 << 21, 4 chunks, 240 ms; quiet, 1 << 21 is also the fastest,
    6 ms against 10 ms for this sum; 1 << 23 falls out of cache, 16 ms)."""
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

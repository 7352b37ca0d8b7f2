"""The fused executor's kernels: window matrices and the hand-written matmuls that apply them.

A window's gates are multiplied into one small 2^w x 2^w matrix (``window_matrix``) and applied
to the state in one matmul over the state viewed as (2^lo, 2^w, rest), which keeps the state's
leg order, so no permutation copies are made. Backward passes are hand-written (``_RowMatmul``,
``_MiddleMatmul``) so that no state is transposed into a copy. On CPU, the states and their
gradients live in reusable workspace buffers (``adtn.plan.WORKSPACE``): a fresh 64 MiB tensor is
page-faulted anew every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...plan import WORKSPACE

__all__ = ["apply_side", "apply_window", "inplace_activation", "window_matrix"]


def window_matrix(gates: Sequence[tuple[torch.Tensor, int]], width: int) -> torch.Tensor:
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


def apply_window(
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


def apply_side(x: torch.Tensor, m: torch.Tensor, lo: int, hi: int, legs: int) -> torch.Tensor:
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


def inplace_activation(state: torch.Tensor, slope: float | None) -> torch.Tensor:
    """ReLU (``slope`` None) or leaky ReLU of a fused state in place, its gradient in a workspace buffer."""
    return _InplaceActivation.apply(state, slope)

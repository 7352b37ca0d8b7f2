"""Fast forms of conv formats: a sequence of small convolutions instead of a rebuilt kernel.

Conv formats with a known fast form run as a sequence of small convolutions instead of
rebuilding the kernel (MTD, Liang and Lee 2021; GKPD, Hameed et al. 2022), each exact and checked against
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import AdtnError
from ..plan import plain_ops
from .forward import ACTIVATION_WEIGHT

__all__ = ["ConvGeometry", "Work", "cp_conv", "cp_cost", "kronecker_conv", "kronecker_cost", "kronecker_exact",
           "tucker_conv", "tucker_cost", "unfold_input"]


class Work(NamedTuple):
    """What one conv form does: FLOPs (multiply-adds x 2) and activation elements read or written.
    ``cost`` weighs both in FLOP-equivalents for the forward choice; reports show ``flops``."""

    flops: int
    moved: int

    @property
    def cost(self) -> int:
        return int(self.flops + ACTIVATION_WEIGHT * self.moved)


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

    def dense_cost(self, n: int, h: int, w: int, out_ch: int, in_ch: int) -> Work:
        """The dense conv's FLOPs and its input and output elements (``in_ch`` per group)."""
        ho, wo = self.out_size(h, w)
        flops = 2 * n * ho * wo * out_ch * in_ch * self.kernel[0] * self.kernel[1]
        return Work(flops, n * (h * w * in_ch + ho * wo * out_ch))

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


def tucker_cost(n: int, h: int, w: int, core: Sequence[int], c: int | None, o: int | None, geo: ConvGeometry) -> Work:
    """Work of ``tucker_conv``: core shape (R_out, R_in, kh, kw); c / o None when not factored."""
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
    return Work(flops, moved)


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


def cp_cost(n: int, h: int, w: int, c: int, o: int, rank: int, geo: ConvGeometry) -> Work:
    """Work of ``cp_conv``."""
    ho, wo = geo.out_size(h, w)
    kh, kw = geo.kernel
    flops = 2 * n * rank * (h * w * c + ho * wo * kh * kw + ho * wo * o)
    moved = n * (h * w * (c + 2 * rank) + ho * wo * (2 * rank + o))
    return Work(flops, moved)


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
                   geo: ConvGeometry) -> Work:
    """Work of ``kronecker_conv`` in its cheaper order; shapes are (F_k, C_k, kh_k, kw_k)."""
    flops, middle, _, _ = _kron_order(a_shape, b_shape, n, h, w, geo)
    ho, wo = geo.out_size(h, w)
    c, o = a_shape[1] * b_shape[1], a_shape[0] * b_shape[0]
    return Work(rank * flops, n * (h * w * c + ho * wo * o) + 2 * rank * middle)


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
    _, _, a_first, dims = _kron_order(a.shape[1:], b.shape[1:], 1, h, w, geo)  # the order does not depend on n
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

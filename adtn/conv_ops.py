"""Convolution building blocks of the conv fast forms: geometry, work counts, layouts, Tucker-2.

A format's conv fast form (``Format.conv_form``; Tucker-2, CP, Kronecker in their folders under
``adtn/templates/``) runs as a sequence of small convolutions instead of rebuilding the kernel
(MTD, Liang and Lee 2021; GKPD, Hameed et al. 2022), each exact and checked against
``F.conv2d`` with the rebuilt kernel in the tests. Here are what they share: the conv
geometry, the ``Work`` a form does, the 1x1 convs across layouts and the Tucker-2 sequence
(1x1 conv C -> R_in, kh x kw conv R_in -> R_out, 1x1 conv R_out -> O), which the generic
low-rank form of any U (out) x V (in, kh, kw) network uses too.

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

from .plan import plain_ops

__all__ = ["ACTIVATION_WEIGHT", "ConvGeometry", "Work", "cpu_nchw", "from_inner", "pointwise_in",
           "pointwise_out", "to_inner", "tucker_conv", "tucker_cost", "unfold_input"]

# Conv stages stream contiguous activations: the forward choice weighs each element read or
# written as this many FLOPs (calibrated with the other weights in ``adtn.layers.forward``).
ACTIVATION_WEIGHT = 20


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


def cpu_nchw(x: torch.Tensor) -> bool:
    """True for a CPU batch not stored channels-last: the fast conv forms run channels-last inside
    (oneDNN's small and depthwise convs run 1.2-3x faster so) and hand back torch's default layout,
    as ``nn.Conv2d`` does; a channels-last batch stays channels-last throughout."""
    return x.device.type == "cpu" and not _channels_last(x) and not plain_ops()


def to_inner(x: torch.Tensor) -> torch.Tensor:
    """The inner (channels-last on CPU) layout of an input that enters a kxk conv directly."""
    return x.contiguous(memory_format=torch.channels_last) if cpu_nchw(x) else x


def from_inner(y: torch.Tensor, nchw: bool) -> torch.Tensor:
    return y.contiguous() if nchw else y


def pointwise_in(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv with weight ``u.T`` (``u`` is (C, R)); from a CPU NCHW batch, its result comes
    channels-last straight from one batched product (``_PointwiseToCL``), with no layout copy."""
    if cpu_nchw(x):
        return _PointwiseToCL.apply(x.contiguous(), u)
    return F.conv2d(x, u.t()[:, :, None, None])


def pointwise_out(z: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, nchw: bool) -> torch.Tensor:
    """The 1x1 conv with weight ``u`` (O, R) (+ bias) on a channels-last ``z``, in torch's default
    layout when ``nchw``. (oneDNN's conv then one layout copy beats a batched product written
    straight into the default layout, whose backward needs products with a transposed operand.)"""
    return from_inner(F.conv2d(z, u[:, :, None, None], bias), nchw)


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
    nchw = cpu_nchw(x)
    x = pointwise_in(x, u_in) if u_in is not None else to_inner(x)
    if u_out is None:
        return from_inner(F.conv2d(x, core, bias, **geo.args), nchw)
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

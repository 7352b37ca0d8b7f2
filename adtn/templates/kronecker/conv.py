"""Kronecker's conv fast form (GKPD, Hameed et al. 2022): the kernel sum_r A_r (x) B_r never formed.

Fold one factor's input channels into the batch, conv with the other factor's terms stacked,
then one conv that sums the R terms, channels interleaved f = f1 * F2 + f2. Exact when A and
B are not both wider than 1 in the same spatial dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...conv_ops import ConvGeometry, Work, cpu_nchw, from_inner, pointwise_in, pointwise_out, to_inner
from ...errors import AdtnError

__all__ = ["KRONECKER_CONV", "KroneckerConv", "kronecker_conv", "kronecker_cost", "kronecker_exact"]


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
    nchw = cpu_nchw(x)
    if c2 == 1 and kh1 == kw1 == 1 and _pointwise(args1):  # a 1x1 conv over all channels
        z = pointwise_in(x, first.reshape(r * f1, c1).t())
    else:
        # input channel c = ca * Cb + cb with (ca, cb) the channels of (A, B)
        xs = to_inner(x).reshape(n, a.shape[2], b.shape[2], h, w)
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
    y = from_inner(y.reshape(n, f1 * f2, h2, w2), nchw)
    return y if bias is None else y + bias[:, None, None]


class KroneckerConv:
    """GKPD's two convs; applies when the network has factors ``a`` and ``b`` and the form is exact."""

    name = "kronecker"

    def factors(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B as (R, F, C, kh, kw) (a 1-D conv's virtual height inserted)."""
        p = layer.tn_params
        return layer.as_2d(p["a"], 3), layer.as_2d(p["b"], 3)

    def applies(self, layer: Any) -> bool:
        if not {"a", "b"} <= set(layer.tn_params):
            return False
        a, b = self.factors(layer)
        return kronecker_exact(a.shape[1:], b.shape[1:])

    def cost(self, layer: Any, n: int, h: int, w: int) -> Work:
        a, b = self.factors(layer)
        return kronecker_cost(a.shape[1:], b.shape[1:], a.shape[0], n, h, w, layer.geometry)

    def run(self, layer: Any, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors(layer)
        return kronecker_conv(x, a, b, layer.bias, layer.geometry)


KRONECKER_CONV = KroneckerConv()

"""CP's conv fast form: 1x1 conv C -> R, depthwise kh x kw (the kh x 1 and 1 x kw pair fused), 1x1 conv R -> O."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...conv_ops import ConvGeometry, Work, cpu_nchw, pointwise_in, pointwise_out

__all__ = ["CP_CONV", "CPConv", "cp_conv", "cp_cost"]


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
    nchw = cpu_nchw(x)
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


class CPConv:
    """CP as three convs; applies when the network has the channel factors ``u_out`` and ``u_in``."""

    name = "cp"

    def applies(self, layer: Any) -> bool:
        return {"u_out", "u_in"} <= set(layer.tn_params)

    def cost(self, layer: Any, n: int, h: int, w: int) -> Work:
        return cp_cost(n, h, w, layer.in_channels, layer.out_channels, layer.tn_params["u_in"].shape[1],
                       layer.geometry)

    def run(self, layer: Any, x: torch.Tensor) -> torch.Tensor:
        p = layer.tn_params
        return cp_conv(x, p["u_out"], p["u_in"], p.get("u_kh"), p.get("u_kw"), layer.bias, layer.geometry)


CP_CONV = CPConv()

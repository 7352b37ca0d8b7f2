"""Tucker(-2)'s conv fast form: 1x1 conv C -> R_in, core kh x kw conv R_in -> R_out, 1x1 conv R_out -> O.

A full Tucker's spatial factors are multiplied into the core first (the kernel is small), so
both ``tucker`` and ``tucker2`` run as the Tucker-2 sequence (``adtn.conv_ops.tucker_conv``).
"""

from __future__ import annotations

from typing import Any

import torch

from ...conv_ops import Work, tucker_conv, tucker_cost

__all__ = ["TUCKER_CONV", "TuckerConv"]


class TuckerConv:
    """The Tucker-2 sequence of convs; applies when the network has a core and a channel factor."""

    name = "tucker2"

    def applies(self, layer: Any) -> bool:
        p = layer.tn_params
        return "core" in p and ("u_in" in p or "u_out" in p)

    def core(self, layer: Any) -> torch.Tensor:
        """The core with the spatial factors (if any) multiplied in: (R_out, R_in, kh, kw)."""
        p = layer.tn_params
        core = p["core"]
        for dim, ax in enumerate(layer.spatial, start=2):
            if f"u_{ax}" in p:
                core = torch.tensordot(core, p[f"u_{ax}"], dims=([dim], [1])).movedim(-1, dim)
        return layer.as_2d(core, 2)

    def cost(self, layer: Any, n: int, h: int, w: int) -> Work:
        p = layer.tn_params
        return tucker_cost(n, h, w, self.core(layer).shape, layer.in_channels if "u_in" in p else None,
                           layer.out_channels if "u_out" in p else None, layer.geometry)

    def run(self, layer: Any, x: torch.Tensor) -> torch.Tensor:
        p = layer.tn_params
        return tucker_conv(x, self.core(layer), p.get("u_in"), p.get("u_out"), layer.bias, layer.geometry)


TUCKER_CONV = TuckerConv()

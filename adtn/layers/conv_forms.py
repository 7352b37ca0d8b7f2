"""Old home of the conv fast forms, kept so that old imports work: the shared conv building
blocks now live in ``adtn.conv_ops`` and each format's form in its folder (``Format.conv_form``)."""

from __future__ import annotations

from ..conv_ops import ConvGeometry, Work, pointwise_in, pointwise_out, tucker_conv, tucker_cost, unfold_input
from ..templates.cp.conv import cp_conv, cp_cost
from ..templates.kronecker.conv import kronecker_conv, kronecker_cost, kronecker_exact

__all__ = ["ConvGeometry", "Work", "cp_conv", "cp_cost", "kronecker_conv", "kronecker_cost", "kronecker_exact",
           "pointwise_in", "pointwise_out", "tucker_conv", "tucker_cost", "unfold_input"]

"""``tucker`` and ``tucker2``: a core with a factor matrix per (compressed) axis (see ``build``)."""

from ..registry import register
from .build import Rank, check_axes, per_axis, positive_int, tucker2_params, tucker_params, tucker_ranks
from .build import tucker as _tucker
from .build import tucker2 as _tucker2
from .conv import TUCKER_CONV
from .decompose import init_semi_tucker, init_tucker, init_tucker2

__all__ = ["Rank", "check_axes", "init_semi_tucker", "init_tucker", "init_tucker2", "per_axis", "positive_int",
           "tucker", "tucker2", "tucker2_params", "tucker_params", "tucker_ranks"]

tucker = register("tucker", count=tucker_params, decompose=init_tucker, conv_form=TUCKER_CONV,
                  policies={"auto": ("linear", "conv")},
                  example=({"out": 16, "in": 16, "kh": 3, "kw": 3}, {"rank": 3}))(_tucker)
tucker2 = register("tucker2", count=tucker2_params, decompose=init_tucker2, conv_form=TUCKER_CONV,
                   policies={"mixed": ("linear", "conv"), "auto": ("linear", "conv")},
                   policy_order={"mixed": -1},  # before cp: a tie (on a matrix both are the SVD) goes to Tucker-2
                   example=({"out": 16, "in": 16, "kh": 3, "kw": 3}, {"rank": 4}))(_tucker2)

"""``cp``: a sum of R rank-one terms, one factor matrix per axis (see ``build``)."""

from ..registry import register
from .build import cp as _cp
from .build import cp_max_rank, cp_params, delta
from .conv import CP_CONV
from .decompose import init_cp

__all__ = ["cp", "cp_max_rank", "cp_params", "delta", "init_cp"]

# on a weight matrix cp is exactly the truncated SVD: ``auto`` tries it on linear layers even when
# the caller restricts its candidates
cp = register("cp", count=cp_params, decompose=init_cp, conv_form=CP_CONV,
              policies={"mixed": ("linear", "conv"), "auto": ("linear", "conv"), "auto_always": ("linear",)},
              example=({"out": 16, "in": 16, "kh": 3, "kw": 3}, {"rank": 4}))(_cp)

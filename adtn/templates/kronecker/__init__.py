"""``kronecker``: a sum of R Kronecker products A_r (x) B_r (GKPD; see ``build``)."""

from ..registry import register
from .budget import kronecker_splits
from .build import default_factors, kronecker_params
from .build import kronecker as _kronecker
from .conv import KRONECKER_CONV
from .decompose import init_kronecker
from .search import kronecker_candidates

__all__ = ["default_factors", "init_kronecker", "kronecker", "kronecker_params", "kronecker_splits"]

kronecker = register("kronecker", count=kronecker_params, decompose=init_kronecker, conv_form=KRONECKER_CONV,
                     candidates=kronecker_candidates, alternatives=kronecker_splits,
                     policies={"auto": ("linear", "conv")},
                     example=({"out": 16, "in": 16, "kh": 3, "kw": 3}, {"rank": 2}))(_kronecker)

"""``semi_tucker``: Tucker whose factors act through the semi-tensor product (see ``build``)."""

from ..registry import register
from ..tucker.decompose import init_semi_tucker
from .build import semi_tucker as _semi_tucker
from .build import semi_tucker_params

__all__ = ["semi_tucker", "semi_tucker_params"]

semi_tucker = register("semi_tucker", count=semi_tucker_params, decompose=init_semi_tucker,
                       example=({"out": 16, "in": 16}, {"rank": 4}))(_semi_tucker)

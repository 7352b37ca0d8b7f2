"""Drop-in layers: ``TNLinear``, ``TNConv2d``, ``TNConv1d`` mirror their torch counterparts."""

from .base import TNLayer
from .conv import TNConv1d, TNConv2d
from .forward import Choice
from .linear import TNLinear

__all__ = ["Choice", "TNConv1d", "TNConv2d", "TNLayer", "TNLinear"]

"""``compile``: a TensorGraph to a ``TNModule``, a deep ADTN structure to a ``DeepTNModule``.

It sits above both engines and the fitter, so that ``module.py`` (the graph engine) imports
neither the deep ADTN engine nor ``fitting``: imports run one way, checked by tests/test_imports.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import fitting
from .deep import DeepTN
from .deep_module import DeepTNModule
from .initializers import InitSpec
from .module import TNModule

__all__ = ["compile"]


def compile(graph: Any, init: InitSpec | torch.Tensor = "normal", **options: Any) -> nn.Module:
    """Compile a TensorGraph into a ``TNModule`` (see its docstring for the options), or a
    deep ADTN structure (``DeepTN``) into a ``DeepTNModule``.

    ``init`` may also be a dense tensor shaped like ``dense()``: the template that built the
    graph initialises from it exactly when it can (TT-SVD, HOSVD, ...), else ``adtn.fit``.
    """
    if isinstance(graph, DeepTN):
        if isinstance(init, torch.Tensor):
            module = DeepTNModule(graph, **options)
            fitting.fit(module, init.to(dtype=module.dtype, device=module.device))
            return module
        return DeepTNModule(graph, "identity" if init == "normal" else init, **options)
    if isinstance(init, torch.Tensor):
        module = TNModule(graph, "normal", **options)
        fitting.initialize(module, init.to(dtype=module.dtype, device=module.device))
        return module
    return TNModule(graph, init, **options)

"""``compile``: a TensorGraph to a ``TNModule``, a deep ADTN structure to a ``DeepTNModule``.

It sits above both networks and the fitter, so that ``module.py`` (the graph engine) imports
neither the deep ADTN engine nor ``fitting``: imports run one way, checked by tests/test_imports.py.
``network_class`` is the one place that maps a kind of structure to its ``TNNetwork`` class;
everything after compiling talks to the network through the base's interface.
"""

from __future__ import annotations

from typing import Any

import torch

from . import fitting
from .errors import AdtnError
from .graph import TensorGraph
from .initializers import InitSpec
from .module import TNModule
from .network import TNNetwork
from .templates.adtn import DeepTN, DeepTNModule

__all__ = ["compile", "network_class"]


def network_class(structure: Any) -> type[TNNetwork]:
    """The ``TNNetwork`` class that compiles ``structure``: ``TNModule`` for a TensorGraph,
    ``DeepTNModule`` for a deep ADTN (``DeepTN``)."""
    if isinstance(structure, DeepTN):
        return DeepTNModule
    if isinstance(structure, TensorGraph):
        return TNModule
    raise AdtnError(f"a TN network needs a TensorGraph or DeepTN structure, got {type(structure).__name__}")


def compile(graph: Any, init: InitSpec | torch.Tensor = "normal", **options: Any) -> TNNetwork:
    """Compile a TensorGraph into a ``TNModule`` (see its docstring for the options), or a
    deep ADTN structure (``DeepTN``) into a ``DeepTNModule``.

    ``init`` may also be a dense tensor shaped like ``dense()``: the template that built the
    graph initialises from it exactly when it can (TT-SVD, HOSVD, ...), else ``adtn.fit``.
    """
    cls = network_class(graph)
    if isinstance(init, torch.Tensor):
        module = cls(graph, **options)
        fitting.initialize(module, init.to(dtype=module.dtype, device=module.device))
        return module
    return cls(graph, init, **options)

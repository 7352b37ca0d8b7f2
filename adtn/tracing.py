"""What torch.compile and long-running models need from the engine's caches.

``LRUCache`` bounds a cache keyed by batch size (plans, forward choices). While torch.compile
traces, planning must not enter the graph (it walks networkx graphs and runs opt_einsum):
``trace_constant`` marks the functions dynamo runs in plain Python and takes as constants, and
``traced_batch`` keys them by a nominal batch, since a dynamic batch dimension is symbolic there.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["COMPILE_BATCH", "LRUCache", "by_handle", "compiling", "new_handle", "trace_constant", "traced_batch",
           "tracing"]


class LRUCache(OrderedDict):
    """A dict that keeps its ``maxsize`` most recently used entries (``get`` and stores count as
    use), so a cache keyed by batch size stays bounded however many sizes a model sees."""

    def __init__(self, maxsize: int = 16) -> None:
        super().__init__()
        self.maxsize = maxsize

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


# ---------------------------------------------------------------------- torch.compile
# The batch size a layer plans and decides for when torch.compile traces it with a symbolic
# batch (a dynamic dimension): one graph serves every size, so the choice is made once.
COMPILE_BATCH = 64


def compiling() -> bool:
    """True while ``torch.compile`` (or ``torch.export``) compiles, also in the plain Python it runs
    meanwhile (a ``trace_constant`` function): Python-side caches are then off."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler and compiler.is_compiling())


def tracing() -> bool:
    """True only while dynamo traces the code symbolically (not in a ``trace_constant`` function it
    runs in plain Python, where sizes are real ints): where to switch to nominal sizes."""
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_dynamo_compiling", None) or getattr(compiler, "is_compiling", None)
    return bool(check and check())


def trace_constant(fn: Any) -> Any:
    """Mark ``fn`` so that ``torch.compile`` runs it in plain Python while tracing and takes its
    result as a constant (``torch.compiler.assume_constant_result``): planning (networkx,
    opt_einsum) then never enters the graph. Its arguments must be constants (a module goes as its
    ``new_handle``), never symbolic sizes (see ``traced_batch``). The flag is set by hand because calling the
    decorator imports dynamo (~0.7 s) on every ``import adtn``."""
    fn._dynamo_marked_constant = True
    return fn


_BY_HANDLE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def new_handle(obj: Any) -> int:
    """A process-unique int naming ``obj`` for the ``trace_constant`` functions. Dynamo passes an int
    to them as a constant on every torch version, a module not always (torch 2.11:
    "UnspecializedNNModuleVariable is not a constant"). Assign it in ``__init__`` and again in
    ``__setstate__``, so that copies and unpickled modules get their own."""
    handle = next(_HANDLES)
    _BY_HANDLE[handle] = obj
    return handle


def by_handle(handle: int) -> Any:
    """The live object ``new_handle`` named ``handle``."""
    return _BY_HANDLE[handle]


def traced_batch(batch: Any) -> int | None:
    """The batch size to plan for: ``batch`` in plain Python, ``COMPILE_BATCH`` while dynamo traces
    (``tracing``; a batch dimension may be symbolic there, and dynamo reports a symbolic int as an int,
    so one plan serves every size; any plan is exact for any batch, only its cost differs)."""
    return batch if batch is None or not tracing() else COMPILE_BATCH

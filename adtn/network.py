"""TNNetwork: what every compiled network shares, a TensorGraph's ``TNModule`` and a deep ADTN's.

A layer holds one of these as ``tn`` and talks to it only through this interface: ``dense()``,
``apply(x, axis)``, ``cost(batch, axis)``, ``check_input``, the plans it streams or rebuilds
with (``stream_plan``, ``dense_plan``), ``rescale_`` and ``split_cost``; no caller asks which
kind of network it holds.

State dict keys, one scheme for every network:

- ``params.<node>``: every trainable node tensor (a graph's param nodes, a deep ADTN's gates);
- ``fixed.<node>``: fixed node tensors (boundary vectors), as buffers;
- a quantity of the whole network keeps its own name at the top (a deep ADTN's ``scale``
  buffer and, with ``learn_scale``, its ``gain`` parameter).

Deep ADTN state dicts written before this scheme keyed the gates ``gates.<node>``; loading
one renames them (``_load_from_state_dict``), so old checkpoints still load.

Caches are declared in ``__init__`` and bounded: ``_plans`` keeps the ``PLANS`` most recent
contraction plans (one per feed and batch size), and pickling drops them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import AdtnError, GraphError, ShapeError
from .graph import TensorGraph
from .plan import Cost, Plan
from .tracing import LRUCache, new_handle

__all__ = ["OLD_PREFIXES", "PLANS", "Buffers", "TNNetwork", "check_fed_input", "feed_axes"]

PLANS = 16  # plans kept per network (one per feed and batch size)
OLD_PREFIXES = {"gates.": "params."}  # state dict keys of older versions -> the current scheme


class Buffers(nn.Module):
    """A dict of buffers (torch has no BufferDict), so fixed nodes move with ``.to()``."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)

    def __getitem__(self, name: str) -> torch.Tensor:
        return getattr(self, name)


class TNNetwork(nn.Module):
    """A compiled tensor network: node tensors in ``params`` / ``fixed``, and the contraction API.

    Subclasses set ``_axis_sizes`` (axis -> size, plain data read by forward) and implement
    ``structure``, ``dense``, ``apply``, ``cost`` and ``stream_plan``.

    Attributes:
        graph: the network as one TensorGraph, or None when it is several (a deep ADTN).
        fallback_init: what a layer's ``init="auto"`` does when the template has no SVD-family
            initialiser: ``"fit"`` (gradient descent) or ``"random"``.
    """

    graph: TensorGraph | None = None
    fallback_init: ClassVar[str] = "fit"

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        fixed: Mapping[str, torch.Tensor],
        *,
        optimize: str | Any = "auto",
        memory_limit: int | None = None,
    ) -> None:
        super().__init__()
        self._trace_handle = new_handle(self)  # how the trace_constant planning functions name this network
        self.optimize = optimize
        self.memory_limit = memory_limit
        self.params = nn.ParameterDict({name: nn.Parameter(t) for name, t in params.items()})
        self.fixed = Buffers(fixed)
        self._plans: LRUCache = LRUCache(PLANS)

    @classmethod
    def for_layer(cls, structure: Any, *, std: float, dtype: torch.dtype | None, device: Any) -> TNNetwork:
        """``structure`` compiled with a TN layer's random init (``std``: the dense entries' target std)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ what it is
    @property
    def structure(self) -> Any:
        """The structure it compiles: a TensorGraph, or a deep ADTN's ``DeepTN``."""
        raise NotImplementedError

    @property
    def axes(self) -> dict[str, int]:
        """The output axes of ``dense()`` and their sizes, in order."""
        return dict(self._axis_sizes)

    @property
    def inputs(self) -> list[str]:
        """Input nodes the caller feeds by name (``module(**inputs)``); none by default."""
        return []

    @property
    def dtype(self) -> torch.dtype:
        for t in self._tensors():
            return t.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for t in self._tensors():
            return t.device
        return torch.device("cpu")

    def _tensors(self):
        return chain(self.params.values(), self.fixed.buffers())

    def node_tensors(self) -> dict[str, torch.Tensor]:
        """Every param and fixed node's current tensor, by node name."""
        return {**dict(self.params.items()), **dict(self.fixed.named_buffers())}

    # ------------------------------------------------------------------ contraction
    def dense(self) -> torch.Tensor:
        """The full tensor, one dimension per output axis."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, axis: str | Sequence[str] = "in") -> torch.Tensor:
        """Contract ``x`` (..., size of ``axis``) through the network: (..., remaining axes)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor | None = None, axis: str | Sequence[str] = "in") -> torch.Tensor:
        """``module()`` -> ``dense()``; ``module(x, axis="in")`` -> ``apply``."""
        return self.dense() if x is None else self.apply(x, axis)

    def check_input(self, x: torch.Tensor, feed: Sequence[str]) -> None:
        """``apply``'s checks on ``x``: known axes, trailing sizes, dtype."""
        check_fed_input(x, feed, self._axis_sizes, self.dtype, self._owner())

    def _owner(self) -> str:
        """How messages name the network."""
        return "the network"

    # ------------------------------------------------------------------ costs
    def cost(self, batch: int | None = None, axis: str | Sequence[str] | None = None) -> Cost:
        """FLOPs, largest intermediate and parameters of ``dense()`` or of ``apply`` on ``axis``."""
        raise NotImplementedError

    def stream_plan(self, feed: Sequence[str], batch: int | None) -> Plan | None:
        """The plan that streams a batch on ``feed`` axes without forming the dense tensor; None
        when the network cannot stream (then ``apply`` rebuilds the dense tensor)."""
        raise NotImplementedError

    def dense_plan(self) -> Plan | None:
        """The one plan ``dense()`` runs; None when it runs several (see ``dense_traffic``)."""
        return None

    def dense_traffic(self) -> int:
        """Elements read and written by ``dense()`` when it is not one plan (``dense_plan`` None)."""
        raise NotImplementedError

    def split_cost(self, batch: int) -> tuple[int, int] | None:
        """(entries streamed by rebuilding, by ``apply_split``) for a batch; None when the network
        has no ``apply_split`` (only a deep ADTN at depth >= 2 has one)."""
        return None

    # ------------------------------------------------------------------ in place
    @torch.no_grad()
    def rescale_(self, factor: float) -> None:
        """Multiply the dense tensor by ``factor``, in place: one parameter node (the network is
        linear in each) takes it."""
        for p in self.params.values():
            p.mul_(factor)
            return

    # ------------------------------------------------------------------ state and pickling
    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Rename keys of older versions (``OLD_PREFIXES``) before loading, so old checkpoints load."""
        for old, new in OLD_PREFIXES.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without caches: plans are rebuilt on demand."""
        state = dict(self.__dict__)
        state["_plans"] = LRUCache(PLANS)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Networks pickled before the bounded plan cache get one."""
        super().__setstate__(state)
        self._trace_handle = new_handle(self)  # a copy or an unpickled network gets its own
        if not isinstance(self.__dict__.get("_plans"), LRUCache):
            self._plans = LRUCache(PLANS)


def feed_axes(axis: str | Sequence[str] | None) -> tuple[str, ...]:
    """``axis`` as a tuple of axis names (``None`` -> none fed)."""
    if axis is None:
        return ()
    return (axis,) if isinstance(axis, str) else tuple(axis)


def check_fed_input(
    x: torch.Tensor, feed: Sequence[str], sizes: Mapping[str, int], dtype: torch.dtype, owner: str
) -> None:
    """``apply``'s input checks, shared by every compiled structure: known axes, trailing
    sizes, and dtype. ``owner`` names the structure in messages."""
    for ax in feed:
        if ax not in sizes:
            raise GraphError(f"apply: {owner} has no axis {ax!r}; axes: {list(sizes)}")
    want = tuple(sizes[ax] for ax in feed)
    if x.dim() < len(feed) or tuple(x.shape[x.dim() - len(feed):]) != want:
        names = ", ".join(f"{ax}={sizes[ax]}" for ax in feed)
        raise ShapeError(f"apply: input of shape {tuple(x.shape)} must end with the sizes of axis ({names}), i.e. {want}")
    if x.dtype != dtype:
        raise AdtnError(f"apply: dtype {x.dtype} does not match the module's {dtype}; cast one of them")

"""Initial values for a graph's parameter nodes, chosen from structure only.

The default ``normal`` init keeps every entry of the contracted tensor at variance
``std**2``: a bond of size r sums r products, so each node gets variance
``prod(r ** -0.5 for its bonds)`` and the product over all nodes cancels every bond once.
Nodes may carry an init hint (``"normal"``, ``"zeros"``, ``"ones"``, ``"identity"``,
``"identity+0.1"`` for identity plus N(0, 0.1) noise, or a float std).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .errors import AdtnError, ShapeError
from .graph import TensorGraph

__all__ = ["InitSpec", "fixed_tensor", "identity_like", "initial_tensors"]

InitSpec = str | Mapping[str, torch.Tensor] | Callable[[str, tuple[int, ...]], torch.Tensor]


def identity_like(shape: tuple[int, ...], dtype: torch.dtype, device: Any = None) -> torch.Tensor:
    """An identity map from the last half of the legs to the first half (rectangular if uneven)."""
    half = len(shape) // 2
    rows, cols = math.prod(shape[:half]), math.prod(shape[half:])
    return torch.eye(rows, cols, dtype=dtype, device=device).reshape(shape)


def _index_std(graph: TensorGraph) -> dict[str, float]:
    """Per-node std that keeps the contracted entries at unit variance: an index of size r
    summed over and shared by m operands gives each of them a variance factor r**(-1/m)
    (m = 2 for a plain bond; more for a delta hyperedge)."""
    from .plan import signature

    sig = signature(graph)
    counts: dict[str, int] = {}
    for _, subs in sig.operands:
        for c in subs:
            counts[c] = counts.get(c, 0) + 1
    out = {}
    for name, subs in sig.operands:
        var = 1.0
        for c in subs:
            if c not in sig.output:
                var *= sig.size_dict[c] ** (-1.0 / counts[c])
        out[name] = math.sqrt(var)
    return out


def _from_hint(
    graph: TensorGraph, node: str, hint: Any, node_std: float, dtype: torch.dtype, device: Any, gen
) -> torch.Tensor:
    shape = graph.shape(node)
    if hint is None or hint == "normal":
        return torch.randn(shape, dtype=dtype, device=device, generator=gen) * node_std
    if isinstance(hint, (int, float)) and not isinstance(hint, bool):
        return torch.randn(shape, dtype=dtype, device=device, generator=gen) * float(hint)
    if hint == "zeros":
        return torch.zeros(shape, dtype=dtype, device=device)
    if hint == "ones":
        return torch.ones(shape, dtype=dtype, device=device)
    if isinstance(hint, str) and hint.startswith("identity"):
        noise = float(hint.partition("+")[2] or 0.0)
        eye = identity_like(shape, dtype, device)
        return eye + noise * torch.randn(shape, dtype=dtype, device=device, generator=gen)
    raise AdtnError(
        f"node {node!r}: unknown init hint {hint!r}; valid: 'normal', 'zeros', 'ones', 'identity', "
        "'identity+<noise std>', or a float std"
    )


def _checked(node: str, tensor: Any, shape: tuple[int, ...], dtype: torch.dtype, device: Any) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    if tuple(tensor.shape) != shape:
        raise ShapeError(f"init for node {node!r}: expected shape {shape}, got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ShapeError(f"init for node {node!r}: tensor contains NaN or inf")
    return tensor.detach().to(dtype=dtype, device=device).clone()


def initial_tensors(
    graph: TensorGraph,
    init: InitSpec = "normal",
    std: float = 1.0,
    dtype: torch.dtype | None = None,
    device: Any = None,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """One tensor per ``param`` node: from a dict, a callable ``(name, shape)``, or by hint."""
    dtype = dtype or torch.get_default_dtype()
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device or "cpu").manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    nodes = graph.nodes_with_role("param")
    stds = _index_std(graph)
    share = std ** (1.0 / max(1, len(nodes)))
    if isinstance(init, Mapping):
        unknown = sorted(set(init) - set(nodes))
        if unknown:
            raise AdtnError(f"init names nodes that are not parameters of {graph.name!r}: {unknown}; params: {nodes}")
    for node in nodes:
        shape = graph.shape(node)
        if isinstance(init, Mapping) and node in init:
            out[node] = _checked(node, init[node], shape, dtype, device)
        elif callable(init) and not isinstance(init, (str, Mapping)):
            out[node] = _checked(node, init(node, shape), shape, dtype, device)
        elif isinstance(init, str) and init != "normal":
            out[node] = _from_hint(graph, node, init, stds[node] * share, dtype, device, gen)
        else:
            out[node] = _from_hint(graph, node, graph.node(node).get("init"), stds[node] * share, dtype, device, gen)
    return out


def fixed_tensor(graph: TensorGraph, node: str, dtype: torch.dtype | None = None, device: Any = None) -> torch.Tensor:
    """The constant value of a ``fixed`` node as a tensor."""
    value = graph.node(node)["value"]
    if value == "delta":
        shape = graph.shape(node)
        out = torch.zeros(shape, dtype=dtype or torch.get_default_dtype(), device=device)
        idx = torch.arange(shape[0], device=device)
        out[(idx,) * len(shape)] = 1.0
        return out
    return torch.tensor(value, dtype=dtype or torch.get_default_dtype(), device=device).reshape(graph.shape(node))

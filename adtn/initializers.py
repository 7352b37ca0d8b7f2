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
from typing import Any, Union

import torch

from .errors import AdtnError, ShapeError
from .graph import TensorGraph

__all__ = ["InitSpec", "initial_tensors", "fixed_tensor", "identity_like"]

InitSpec = Union[str, Mapping[str, torch.Tensor], Callable[[str, tuple[int, ...]], torch.Tensor]]


def identity_like(shape: tuple[int, ...], dtype: torch.dtype, device: Any = None) -> torch.Tensor:
    """An identity map from the last half of the legs to the first half (rectangular if uneven)."""
    half = len(shape) // 2
    rows, cols = math.prod(shape[:half]), math.prod(shape[half:])
    return torch.eye(rows, cols, dtype=dtype, device=device).reshape(shape)


def _bond_std(graph: TensorGraph, node: str) -> float:
    var = 1.0
    for leg in graph.legs(node):
        if graph.partner((node, leg)) is not None:
            var *= graph.leg_size((node, leg)) ** -0.5
    return math.sqrt(var)


def _from_hint(graph: TensorGraph, node: str, hint: Any, std: float, dtype: torch.dtype, device: Any, gen) -> torch.Tensor:
    shape = graph.shape(node)
    n_param = max(1, len(graph.nodes_with_role("param")))
    node_std = _bond_std(graph, node) * std ** (1.0 / n_param)
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
            out[node] = _from_hint(graph, node, init, std, dtype, device, gen)
        else:
            out[node] = _from_hint(graph, node, graph.node(node).get("init"), std, dtype, device, gen)
    return out


def fixed_tensor(graph: TensorGraph, node: str, dtype: torch.dtype | None = None, device: Any = None) -> torch.Tensor:
    """The constant value of a ``fixed`` node as a tensor."""
    value = graph.node(node)["value"]
    return torch.tensor(value, dtype=dtype or torch.get_default_dtype(), device=device).reshape(graph.shape(node))

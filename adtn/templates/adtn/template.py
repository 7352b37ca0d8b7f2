"""The deep ADTN template (Qing et al., arXiv 2305.06058): a weight decoded by ``depth`` gate layers.

``build({"out": 4096, "in": 4096}, depth=2)`` returns a ``DeepTN``: Q = ceil(log2(prod(axes)))
legs of size 2 (the weight flattened row-major and padded with zeros to 2^Q entries, cropped
after contraction), the boundary v^{⊗Q} with v = [1, 0], and ``depth`` layers of Q - 1 gates
2x2x2x2 with ``activation`` between layers. Layouts (one layer's gates in application order):

- ``"brickwall"``: with ``column_order=(0, 1)`` the gates on (0,1),(2,3),... then (1,2),(3,4),...;
  ``(1, 0)`` puts the odd column first.
- ``"staircase"``: (0,1),(1,2),(2,3),...

A first-layer gate whose inputs are both boundary vectors is stored as its 4 effective entries,
every other gate as 16, so (brickwall, column_order (0, 1))

    params = 4 b + 16 (Q - 1 - b) + 16 (Q - 1)(depth - 1) (+ 1 with learn_scale),  b = floor(Q / 2)

(b = floor((Q - 1) / 2) for column order (1, 0), Q >= 3; b = 1 for the staircase): VGG-16's
512 -> 4096 (Q = 21) and 4096 -> 4096 (Q = 24) classifier layers take 200 + 224 = 424.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ...errors import ShapeError, TemplateError
from ..registry import register
from .operators import ACTIVATIONS, LAYOUTS, PREV, STATE, gate_pairs, num_legs, operator_graph
from .structure import DeepTN

__all__ = ["adtn_params", "boundary_gates", "build", "check_options"]

COLUMN_ORDERS = ((0, 1), (1, 0))


def check_options(
    axes: Mapping[str, int],
    depth: int,
    layout: str,
    column_order: Sequence[int],
    activation: str | None = "relu",
    scale: float | None = None,
) -> tuple[dict[str, int], int, tuple[int, int]]:
    """Checked (sizes, Q, column order); raises ``TemplateError``/``ShapeError`` that name the option."""
    sizes = _check_axes(axes)
    reserved = [ax for ax in sizes if ax in (STATE, PREV)]
    if reserved:
        raise TemplateError(f"adtn: axis names {[STATE, PREV]} are reserved for the state, got axis {reserved[0]!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise TemplateError(f"adtn: depth must be a positive integer (the number of gate layers), got {depth!r}")
    if layout not in LAYOUTS:
        raise TemplateError(f"adtn: unknown layout {layout!r}; valid: {list(LAYOUTS)}")
    order = tuple(column_order) if isinstance(column_order, Sequence) else column_order
    if order not in COLUMN_ORDERS:
        raise TemplateError(f"adtn: column_order must be one of {list(COLUMN_ORDERS)}, got {column_order!r}")
    if activation not in ACTIVATIONS:
        raise TemplateError(f"adtn: unknown activation {activation!r}; valid: {list(ACTIVATIONS)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise TemplateError(f"adtn: scale must be a positive finite number or None (from the fan-in), got {scale!r}")
    q = num_legs(math.prod(sizes.values()))
    if q < 2:
        raise ShapeError(f"adtn: a weight needs at least 3 entries (2 legs of size 2), axes {sizes} hold "
                         f"{math.prod(sizes.values())}")
    return sizes, q, order


def _check_axes(axes: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(axes, Mapping) or not axes:
        raise ShapeError(f"adtn: axes must be a non-empty mapping name -> size, e.g. {{'out': 4096, 'in': 4096}}, "
                         f"got {axes!r}")
    for name, size in axes.items():
        if not isinstance(name, str) or not name:
            raise ShapeError(f"adtn: axis names must be non-empty strings, got {name!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ShapeError(f"adtn: axis {name!r} must have a positive integer size, got {size!r}")
    return dict(axes)


def boundary_gates(q: int, layout: str = "brickwall", column_order: Sequence[int] = (0, 1)) -> int:
    """How many first-layer gates act directly on v⊗v (closed form)."""
    if layout == "staircase" or q == 2:
        return 1
    return q // 2 if tuple(column_order) == (0, 1) else (q - 1) // 2


def adtn_params(
    axes: Mapping[str, int],
    *,
    depth: int = 1,
    layout: str = "brickwall",
    column_order: Sequence[int] = (0, 1),
    learn_scale: bool = False,
    **_: object,
) -> int:
    """Closed-form parameter count: 4 per boundary gate, 16 per other gate, +1 with learn_scale."""
    _, q, order = check_options(axes, depth, layout, column_order)
    b = boundary_gates(q, layout, order)
    return 4 * b + 16 * (q - 1 - b) + 16 * (q - 1) * (depth - 1) + int(bool(learn_scale))


@register("adtn", formula=adtn_params, kinds=("linear", "conv"), example=({"out": 8, "in": 8}, {"depth": 2}))
def build(
    axes: Mapping[str, int],
    *,
    depth: int = 1,
    activation: str | None = "relu",
    negative_slope: float = 0.01,
    learn_scale: bool = False,
    layout: str = "brickwall",
    column_order: Sequence[int] = (0, 1),
    scale: float | None = None,
) -> DeepTN:
    """Deep ADTN: ``depth`` layers of Q - 1 two-leg gates on the product state, activation between.

    Args:
        axes: the weight's axes in order, e.g. ``{"out": 4096, "in": 4096}`` (nn.Linear) or
            ``{"out", "in", "kh", "kw"}`` (a conv kernel); flattened row-major, zero-padded to 2^Q.
        depth: number of gate layers M (the activation acts between them, not after the last).
        activation: ``"relu"``, ``"leaky_relu"`` or None (the multilinear ablation).
        negative_slope: the leaky ReLU's slope.
        learn_scale: make the global scale one extra trainable parameter (a gain, init 1).
        layout: ``"brickwall"`` or ``"staircase"``.
        column_order: which brick-wall column comes first: (0, 1) or (1, 0).
        scale: a fixed global scale; None sets it when compiled so that the decoded weight's
            std at init is 1/sqrt(fan_in).
    """
    sizes, q, order = check_options(axes, depth, layout, column_order, activation, scale)
    pairs = gate_pairs(q, layout, order)
    exact = math.prod(sizes.values()) == 2**q
    last_axes = {ax: n.bit_length() - 1 for ax, n in sizes.items() if n > 1} if exact else None
    operators = [operator_graph(m, q, pairs, last_axes if m == depth - 1 else None) for m in range(depth)]
    options = {"layout": layout, "column_order": list(order), "depth": depth}
    return DeepTN(operators, sizes, activation=activation, negative_slope=float(negative_slope),
                  learn_scale=learn_scale, scale=scale, options=options, name="adtn")

"""The operator graphs of a deep ADTN: one layer of two-leg gates on Q legs of size 2, as a TensorGraph.

``operator_graph`` builds one layer (operator 0 closed by the boundary vectors, operator m >= 1
reading the previous state through its axis ``prev``); ``trace_gates`` reads a graph back as a
chain of nearest-neighbour gates, which is what the fused executor needs (``schedule.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from ...errors import GraphError, TemplateError
from ...graph import TensorGraph

__all__ = ["ACTIVATIONS", "BOUNDARY", "LAYOUTS", "PREV", "STATE", "Activation", "Layout", "gate_pairs", "num_legs", "operator_graph",
           "trace_gates"]

STATE = "state"  # output axis of an operator whose legs are not split into the weight's axes
PREV = "prev"  # output axis through which operator m >= 1 reads the previous state
LAYOUTS = ("brickwall", "staircase")
ACTIVATIONS = ("relu", "leaky_relu", None)
BOUNDARY = [1.0, 0.0]
Layout = Literal["brickwall", "staircase"]
Activation = Literal["relu", "leaky_relu"] | None


def num_legs(n: int) -> int:
    """Q = ceil(log2(n)): the number of size-2 legs that hold ``n`` entries after zero padding."""
    return max(0, (n - 1).bit_length())


def gate_pairs(q: int, layout: str = "brickwall", column_order: Sequence[int] = (0, 1)) -> list[tuple[int, int]]:
    """The legs each gate of one layer acts on, in application order.

    ``brickwall``: the column starting at leg ``column_order[0]`` ((0,1),(2,3),... for 0), then
    the other one; ``staircase``: (0,1),(1,2),(2,3),...
    """
    if layout == "brickwall":
        return [(k, k + 1) for start in column_order for k in range(start, q - 1, 2)]
    if layout == "staircase":
        return [(k, k + 1) for k in range(q - 1)]
    raise TemplateError(f"adtn: unknown layout {layout!r}; valid: {list(LAYOUTS)}")


def operator_graph(
    layer: int,
    q: int,
    pairs: Sequence[tuple[int, int]],
    out_axes: Mapping[str, int] | None = None,
) -> TensorGraph:
    """The frozen graph of layer ``layer`` (0: on the product state; else fed through ``prev``).

    ``out_axes`` maps output axis names to their number of legs (summing to ``q``), leg 0
    first; None gives one axis ``state`` of all ``q`` legs.
    """
    g = TensorGraph(f"l{layer}")
    top: dict[int, str] = {}  # state leg -> the open output leg now carrying it
    prev: dict[int, str] = {}  # state leg -> the input leg that reads it (layer >= 1)
    for k, (a, b) in enumerate(pairs):
        name = f"l{layer}_g{k}"
        if layer == 0 and a not in top and b not in top:
            g.add_node(name, {"o0": 2, "o1": 2}, on=[a, b], boundary=True)
        else:
            g.add_node(name, {"o0": 2, "o1": 2, "i0": 2, "i1": 2}, init="identity+0.5", on=[a, b])
            for leg, j in (("i0", a), ("i1", b)):
                if j in top:
                    g.bond(top[j], f"{name}.{leg}")
                elif layer == 0:
                    g.add_node(f"l0_v{j}", {"s": 2}, role="fixed", value=BOUNDARY)
                    g.bond(f"l0_v{j}.s", f"{name}.{leg}")
                else:
                    prev[j] = f"{name}.{leg}"
        top[a], top[b] = f"{name}.o0", f"{name}.o1"
    missing = [j for j in range(q) if j not in top]
    if missing:
        raise GraphError(f"operator l{layer}: legs {missing} of {q} are touched by no gate; pairs {list(pairs)}")
    outputs: dict[str, list[str]] = {}
    start = 0
    for axis, n in (out_axes or {STATE: q}).items():
        outputs[axis] = [top[j] for j in range(start, start + n)]
        start += n
    if start != q:
        raise GraphError(f"operator l{layer}: output axes {dict(out_axes or {})} hold {start} legs, need {q}")
    if layer:
        outputs[PREV] = [prev[j] for j in range(q)]
    return g.set_outputs(outputs).freeze()


def trace_gates(op: TensorGraph, layer: int, q: int) -> list[tuple[str, int, int]] | str:
    """The gates of an operator as (node, a, b) in application order, checked against its bonds.

    Returns a reason (str) when the graph is not a chain of nearest-neighbour gates in leg
    order (then only the planner can contract it). Used by the fused executor, which applies
    gates to a state stored in leg order.
    """
    top: dict[int, str] = {}
    if layer:
        prev = [str(leg) for leg in op.outputs.get(PREV, ())]
        if len(prev) != q:
            return f"axis {PREV!r} does not hold {q} legs"
        top = dict(enumerate(prev))
    gates = []
    for name in op.nodes_with_role("param"):
        attrs = op.node(name)
        on, legs = attrs.get("on"), set(attrs["legs"])
        if not (isinstance(on, (list, tuple)) and len(on) == 2 and on[1] == on[0] + 1 and 0 <= on[0] < q - 1):
            return f"gate {name!r}: meta 'on' must be two neighbouring legs, got {on!r}"
        a, b = on
        if legs == {"o0", "o1"}:
            if layer or a in top or b in top:
                return f"gate {name!r} has no inputs but legs {a}, {b} already carry a state"
        elif legs == {"o0", "o1", "i0", "i1"}:
            for leg, j in (("i0", a), ("i1", b)):
                partner = op.partner((name, leg))
                got = f"{name}.{leg}" if partner is None else str(partner)  # an open input must be in PREV
                if j in top:
                    if got != top[j]:
                        return f"gate {name!r}: input {leg} reads {got}, expected {top[j]} (leg {j})"
                elif partner is None or op.node(partner.node)["role"] != "fixed" or len(op.legs(partner.node)) != 1:
                    return f"gate {name!r}: input {leg} of a fresh leg must be a fixed vector, got {partner}"
        else:
            return f"gate {name!r}: legs must be o0, o1 (, i0, i1), got {sorted(legs)}"
        top[a], top[b] = f"{name}.o0", f"{name}.o1"
        gates.append((name, a, b))
    outs = [str(leg) for ax, axis_legs in op.outputs.items() if ax != PREV for leg in axis_legs]
    if outs != [top.get(j) for j in range(q)]:
        return "output legs are not the state legs 0..Q-1 in order"
    return gates

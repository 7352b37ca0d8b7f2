"""DeepTN: the deep ADTN, a chain of operator graphs with an element-wise activation between them.

A weight of ``prod(axes)`` entries is padded with zeros to 2^Q entries (Q legs of size 2,
leg 0 most significant, i.e. the row-major flattening of the weight), decoded from the
product state v^{⊗Q} with v = [1, 0], and cropped back (Qing et al., arXiv 2305.06058):

    T = L^(M) σ( ... σ(L^(2) σ(L^(1) v^{⊗Q})) ),   W = scale · T[:prod(axes)].reshape(axes)

Each layer L^(m) is one **operator graph**: a brick wall (or staircase) of Q - 1 gates of
shape 2x2x2x2 (legs ``o0, o1, i0, i1``; as a 4x4 map it takes ``(i0, i1)`` to ``(o0, o1)``).
Operator m >= 1 reads the previous state through its output axis ``prev`` (Q legs; feed it
with ``adtn.plan(op, feed=("prev",))``). Operator 0 acts on the product state, so it is a
plain multilinear graph closed by fixed ``[1, 0]`` nodes; a gate whose two inputs are both
boundary vectors only ever sees its ``[:, :, 0, 0]`` slice and is stored as that slice (a
gate node with only ``o0, o1``), so the parameter count is exact. The last operator names its
output legs after the weight's axes when every axis size is a power of two (then, at depth 1,
the whole network is one TensorGraph and an input can be streamed through the gates), else
it has one axis ``state`` of 2^Q entries that is cropped after contraction.

Node names: gate k of layer m (in application order) is ``l<m>_g<k>``; the boundary vector of
leg j is ``l0_v<j>``. Gate nodes carry the meta ``on=[a, b]`` (the state legs they act on).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .errors import GraphError, SchemaError, ShapeError, TemplateError
from .graph import TensorGraph, read_json
from .graph_json import DEEP_KEYS, check_keys, in_source

__all__ = [
    "ACTIVATIONS",
    "LAYOUTS",
    "PREV",
    "SCHEMA",
    "STATE",
    "DeepTN",
    "fused_schedule",
    "gate_pairs",
    "num_legs",
    "operator_graph",
    "trace_gates",
    "windows",
]

SCHEMA = "adtn.deep/1"
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


def windows(pairs: Sequence[tuple[int, int]], q: int, width: int = 4) -> list[tuple[int, int, list[int]]]:
    """Group one layer's gates into windows of at most ``width`` neighbouring legs.

    Each window (lo, hi, gate indices) is one pass over the state: its gates, fused into a
    2^(hi-lo) matrix, act on legs [lo, hi). Windows sweep left to right; a gate joins a window
    when both its legs lie inside and no earlier gate that shares a leg is left for later, so
    the application order of the gates is kept. A window that would leave 1 or 2 legs after it
    is stretched to the last leg when that keeps it within ``width + 1`` legs (a thin trailing
    dimension makes a slow batched matmul).
    """
    pending = list(range(len(pairs)))
    out = []
    while pending:
        lo = min(pairs[k][0] for k in pending)
        for _ in range(2):
            hi = q if q - lo <= width + 1 else lo + width
            chosen, blocked = [], set()
            for k in pending:
                a, b = pairs[k]
                if lo <= a and b < hi and a not in blocked and b not in blocked:
                    chosen.append(k)
                else:
                    blocked.update((a, b))
            if chosen:
                break
            lo = pairs[pending[0]][0]  # the earliest pending gate always fits a window at its first leg
        lo, hi = min(pairs[k][0] for k in chosen), max(pairs[k][1] for k in chosen) + 1
        out.append((lo, q if 0 < q - hi <= 2 and q - lo <= width + 1 else hi, chosen))
        pending = [k for k in pending if k not in chosen]
    return out


def fused_schedule(deep: DeepTN, width: int = 5) -> tuple[list, dict[int, str]] | str:
    """The fused executor's plan: per layer, windows ``(lo, hi, [(gate, first leg), ...])``, and
    the fixed boundary node of each leg that has one; a reason (str) when some operator is not a
    nearest-neighbour gate chain (``trace_gates``)."""
    schedule = []
    for m, op in enumerate(deep.operators):
        gates = trace_gates(op, m, deep.q)
        if isinstance(gates, str):
            return f"operator {m} ({op.name!r}): {gates}"
        wins = windows([(a, b) for _, a, b in gates], deep.q, width)
        schedule.append([(lo, hi, [(gates[k][0], gates[k][1]) for k in idx]) for lo, hi, idx in wins])
    vectors = {}
    op = deep.operators[0]
    for name, a, b in trace_gates(op, 0, deep.q):
        for leg, j in (("i0", a), ("i1", b)):
            partner = op.partner((name, leg)) if leg in op.legs(name) else None
            if partner is not None and op.node(partner.node)["role"] == "fixed":
                vectors[j] = partner.node
    return schedule, vectors


class DeepTN:
    """The structure of a deep ADTN (no tensors): operator graphs, activation, scale options.

    Build one with ``adtn.templates.adtn.build``; compile it with ``adtn.compile`` (a
    ``DeepTNModule``). ``num_params`` counts effective gate entries (+1 with ``learn_scale``).
    """

    def __init__(
        self,
        operators: Sequence[TensorGraph],
        axes: Mapping[str, int],
        *,
        activation: Activation = "relu",
        negative_slope: float = 0.01,
        learn_scale: bool = False,
        scale: float | None = None,
        options: Mapping[str, Any] | None = None,
        name: str = "adtn",
    ) -> None:
        self.operators = [op.freeze() for op in operators]
        self.axes = dict(axes)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.learn_scale = bool(learn_scale)
        self.scale = None if scale is None else float(scale)
        self.options = dict(options or {})
        self.name = name
        self._validate()

    def _validate(self) -> None:
        if not self.operators:
            raise GraphError(f"DeepTN {self.name!r}: needs at least one operator graph")
        if self.activation not in ACTIVATIONS:
            raise TemplateError(f"adtn: unknown activation {self.activation!r}; valid: {list(ACTIVATIONS)}")
        if num_legs(self.size) != self.q:
            raise ShapeError(f"DeepTN {self.name!r}: axes {self.axes} ({self.size} entries) need Q = "
                             f"{num_legs(self.size)} legs, the operators have {self.q}")
        seen: set[str] = set()
        for m, op in enumerate(self.operators):
            has_prev = PREV in op.outputs
            if has_prev != (m > 0):
                rule = "reads the previous state through" if m else "acts on the boundary state and has no"
                raise GraphError(f"DeepTN {self.name!r}: operator {m} ({op.name!r}) {rule} axis {PREV!r}; "
                                 f"its axes: {list(op.outputs)}")
            out = [ax for ax in op.outputs if ax != PREV]
            legs = [s for ax in out for s in op.axis_shape(ax)]
            if legs != [2] * self.q or (m > 0 and list(op.axis_shape(PREV)) != [2] * self.q):
                raise GraphError(f"DeepTN {self.name!r}: operator {m} ({op.name!r}) must map {self.q} legs of size 2 "
                                 f"to {self.q}; its axes: { {ax: op.axis_shape(ax) for ax in op.outputs} }")
            if m < self.depth - 1 and out != [STATE]:
                raise GraphError(f"DeepTN {self.name!r}: operator {m} is followed by the activation, so its "
                                 f"output axis must be {STATE!r}, got {out}")
            split = [ax for ax, n in self.axes.items() if n > 1]
            if m == self.depth - 1 and out != [STATE] and out != split:
                raise GraphError(f"DeepTN {self.name!r}: the last operator's axes must be {STATE!r} or the "
                                 f"weight's axes of size > 1 {split}, got {out}")
            if m == self.depth - 1 and out == split != [STATE]:
                got = {ax: math.prod(op.axis_shape(ax)) for ax in split}
                if got != {ax: self.axes[ax] for ax in split}:
                    raise GraphError(f"DeepTN {self.name!r}: the last operator's axes hold {got}, the weight's "
                                     f"are {self.axes}")
            dup = seen.intersection(op.nodes)
            if dup:
                raise GraphError(f"DeepTN {self.name!r}: node names must be unique across operators, "
                                 f"{sorted(dup)} repeat in operator {m}")
            seen.update(op.nodes)

    # ------------------------------------------------------------------ reading
    @property
    def depth(self) -> int:
        return len(self.operators)

    @property
    def q(self) -> int:
        """Number of legs of size 2 of the state (2^Q >= the weight's entries)."""
        op = self.operators[0]
        return sum(len(op.axis_shape(ax)) for ax in op.outputs if ax != PREV)

    @property
    def size(self) -> int:
        """Number of entries of the weight: ``prod(axes)`` (the first of the 2^Q decoded ones)."""
        return math.prod(self.axes.values())

    @property
    def exact(self) -> bool:
        """True when the last operator's output legs are the weight's axes (no padding, no crop;
        axes of size 1 have no legs)."""
        return STATE not in self.operators[-1].outputs

    @property
    def fan_in(self) -> int:
        """Entries per output unit: ``prod(axes) / axes['out']`` (``in * kh * kw`` for a conv)."""
        first = "out" if "out" in self.axes else next(iter(self.axes))
        return max(1, self.size // self.axes[first])

    @property
    def num_params(self) -> int:
        """Effective trainable entries: every gate node's size (4 or 16), +1 with ``learn_scale``."""
        return sum(op.num_params for op in self.operators) + int(self.learn_scale)

    def gates(self) -> list[tuple[int, str]]:
        """Every gate node as (layer, name), in application order."""
        return [(m, n) for m, op in enumerate(self.operators) for n in op.nodes_with_role("param")]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "axes": self.axes,
            "activation": self.activation,
            "negative_slope": self.negative_slope,
            "learn_scale": self.learn_scale,
            "scale": self.scale,
            "options": self.options,
            "operators": [op.to_dict() for op in self.operators],
        }

    def to_json(self, path: str | Path | None = None, indent: int | None = None) -> str:
        """Serialise (schema ``adtn.deep/1``, each operator's ``to_dict()`` embedded); write if ``path``."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeepTN:
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise SchemaError(f"DeepTN data must have schema {SCHEMA!r}, got {got!r}")
        check_keys("DeepTN JSON", data, DEEP_KEYS)
        return cls(
            [TensorGraph.from_dict(op) for op in data["operators"]],
            data["axes"],
            activation=data["activation"],
            negative_slope=data.get("negative_slope", 0.01),
            learn_scale=data.get("learn_scale", False),
            scale=data.get("scale"),
            options=data.get("options"),
            name=data.get("name", "adtn"),
        )

    @classmethod
    def from_json(cls, source: str | Path) -> DeepTN:
        """Read a DeepTN from a JSON string or a path to a JSON file."""
        data = read_json(source, "DeepTN")
        with in_source(source):
            return cls.from_dict(data)

    save = to_json
    load = from_json

    def draw(
        self, path: str | Path | None = None, layers: Sequence[int] | None = None, layout: str = "spring"
    ) -> Any:
        """Draw the operators (default: all) side by side with ``adtn.draw`` in ``layout``; returns the figure."""
        import matplotlib

        from .draw import draw

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        picked = list(range(self.depth)) if layers is None else list(layers)
        fig, axs = plt.subplots(1, len(picked), figsize=(7 * len(picked), 6), squeeze=False)
        for ax, m in zip(axs[0], picked):
            draw(self.operators[m], ax=ax, layout=layout, title=f"{self.name} layer {m}")
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(fig)
        return fig

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeepTN) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        axes = ", ".join(f"{ax}={n}" for ax, n in self.axes.items())
        act = self.activation if self.activation is not None else "linear"
        return (f"DeepTN({self.name!r}, axes=({axes}), q={self.q}, depth={self.depth}, activation={act}, "
                f"params={self.num_params})")

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
from typing import Any

from ...errors import GraphError, SchemaError, ShapeError, TemplateError
from ...graph import TensorGraph, read_json
from ...graph_json import DEEP_KEYS, check_keys, in_source
from .operators import ACTIVATIONS, PREV, STATE, Activation, num_legs

__all__ = ["SCHEMA", "DeepTN"]

SCHEMA = "adtn.deep/1"


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
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.operators = [op.freeze() for op in operators]
        self.axes = dict(axes)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.learn_scale = bool(learn_scale)
        self.scale = None if scale is None else float(scale)
        self.options = dict(options or {})
        self.name = name
        self.meta: dict[str, Any] = dict(meta or {})  # as TensorGraph.meta: the template that built it
        self._template_options: dict[str, Any] | None = None  # its exact python options (templates.register)
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
            **({"meta": self.meta} if self.meta else {}),
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
            meta=data.get("meta"),
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

        from ...draw import draw

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
        """Same structure and options (``meta`` is not compared, as for TensorGraph)."""
        if not isinstance(other, DeepTN):
            return False
        mine, theirs = self.to_dict(), other.to_dict()
        mine.pop("meta", None)
        theirs.pop("meta", None)
        return mine == theirs

    __hash__ = None  # type: ignore[assignment]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """DeepTNs pickled before ``meta`` existed get an empty one."""
        self.__dict__.update(state)
        self.__dict__.setdefault("meta", {})
        self.__dict__.setdefault("_template_options", None)

    def __repr__(self) -> str:
        axes = ", ".join(f"{ax}={n}" for ax, n in self.axes.items())
        act = self.activation if self.activation is not None else "linear"
        return (f"DeepTN({self.name!r}, axes=({axes}), q={self.q}, depth={self.depth}, activation={act}, "
                f"params={self.num_params})")

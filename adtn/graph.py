"""TensorGraph: the structure of a tensor network, as a networkx MultiGraph of named legs.

A node is a tensor with named legs and sizes, a role (``param``, ``fixed`` constant, or
``input`` placeholder) and an optional init hint. A bond joins two legs of equal size.
Every leg that is not bonded is open and belongs to exactly one named output axis; an
axis fuses its legs row-major (first leg most significant). The graph never holds
trainable tensors: fixed values are stored as plain nested lists so JSON round trips.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import networkx as nx

from .errors import FrozenGraphError, GraphError, SchemaError, ShapeError
from .graph_json import check_graph_dict, in_source, source_label

__all__ = ["ROLES", "SCHEMA", "SYMBOLIC_VALUES", "Bond", "Leg", "TensorGraph", "read_json"]

SCHEMA = "adtn.graph/1"
ROLES = ("param", "fixed", "input")
# Symbolic fixed values: "delta" is the copy tensor (1 where all indices agree). The
# planner never materialises it: its legs become one shared (hyper)index.
SYMBOLIC_VALUES = ("delta",)
Role = Literal["param", "fixed", "input"]
LegRef = "str | tuple[str, str]"


@dataclass(frozen=True)
class Leg:
    """A leg addressed by node and name; ``str(leg)`` is ``"node.leg"``."""

    node: str
    name: str

    def __str__(self) -> str:
        return f"{self.node}.{self.name}"


@dataclass(frozen=True)
class Bond:
    """Two legs of equal size contracted together."""

    a: Leg
    b: Leg
    size: int


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name or "." in name or name.startswith("_"):
        raise GraphError(
            f"{kind} name must be a non-empty string without '.' and not starting with '_', got {name!r}"
        )
    return name


def _check_size(where: str, size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise GraphError(f"leg {where}: size must be a positive integer, got {size!r}")
    return size


def _nested_shape(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _to_nested_list(value: Any) -> Any:
    """Turn a tensor, array, number or nested sequence into plain nested lists of floats."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().tolist()
    elif hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (int, float)):
        return float(value)
    return [_to_nested_list(v) for v in value]


class TensorGraph:
    """A tensor network's structure: nodes with named legs, bonds, and named output axes.

    Build it with ``add_node``, ``bond`` and ``set_outputs``; ``freeze()`` validates it and
    forbids later mutation. ``adtn.compile(graph)`` turns it into a torch module.
    """

    def __init__(self, name: str = "tn") -> None:
        self.name = name
        self._g = nx.MultiGraph(name=name)
        self._bonded: dict[Leg, Leg] = {}
        self._outputs: dict[str, tuple[Leg, ...]] = {}
        self._axis_of: dict[Leg, str] = {}
        self._frozen = False
        self._hash: str | None = None
        self._template_options: dict[str, Any] | None = None

    # ------------------------------------------------------------------ building
    def _mutable(self, action: str) -> None:
        if self._frozen:
            raise FrozenGraphError(
                f"graph {self.name!r} is frozen: cannot {action}; use graph.copy() for an editable copy"
            )

    def add_node(
        self,
        name: str,
        legs: Mapping[str, int],
        role: Role = "param",
        value: Any = None,
        init: str | float | None = None,
        **meta: Any,
    ) -> TensorGraph:
        """Add a tensor with named legs. ``role="fixed"`` needs a ``value`` of the legs' shape."""
        self._mutable(f"add node {name!r}")
        _check_name("node", name)
        if name in self._g:
            raise GraphError(f"node {name!r} already exists in graph {self.name!r}")
        if role not in ROLES:
            raise GraphError(f"node {name!r}: role must be one of {ROLES}, got {role!r}")
        if not isinstance(legs, Mapping) or not legs:
            raise GraphError(f"node {name!r}: legs must be a non-empty mapping name -> size, got {legs!r}")
        checked = {}
        for leg, size in legs.items():
            _check_name("leg", leg)
            checked[leg] = _check_size(f"{name}.{leg}", size)
        shape = tuple(checked.values())
        stored = None
        if role == "fixed" and isinstance(value, str):
            if value not in SYMBOLIC_VALUES:
                raise GraphError(f"fixed node {name!r}: symbolic value must be one of {SYMBOLIC_VALUES}, got {value!r}")
            if len(set(shape)) != 1:
                raise ShapeError(f"fixed node {name!r}: a 'delta' (copy) tensor needs legs of one size, got {checked}")
            stored = value
        elif role == "fixed":
            if value is None:
                raise GraphError(f"fixed node {name!r} needs a value of shape {shape}, got none")
            stored = _to_nested_list(value)
            got = _nested_shape(stored)
            if got != shape:
                raise ShapeError(f"fixed node {name!r}: value must have shape {shape} (legs {list(checked)}), got {got}")
            if not all(math.isfinite(x) for x in _flatten(stored)):
                raise ShapeError(f"fixed node {name!r}: value contains NaN or inf")
        elif value is not None:
            raise GraphError(f"node {name!r}: only fixed nodes take a value, this one is {role!r}")
        self._g.add_node(name, legs=checked, role=role, value=stored, init=init, **meta)
        return self

    def bond(self, a: str | tuple[str, str], b: str | tuple[str, str]) -> TensorGraph:
        """Contract leg ``a`` with leg ``b`` (``"node.leg"``); their sizes must be equal."""
        la, lb = self.leg(a), self.leg(b)
        self._mutable(f"bond {la} -- {lb}")
        if la == lb:
            raise GraphError(f"bond {la} -- {lb}: a leg cannot be bonded to itself")
        for leg in (la, lb):
            if leg in self._bonded:
                raise GraphError(f"bond {la} -- {lb}: leg {leg} is already bonded to {self._bonded[leg]}")
            if leg in self._axis_of:
                raise GraphError(f"bond {la} -- {lb}: leg {leg} is already in output axis {self._axis_of[leg]!r}")
        sa, sb = self.leg_size(la), self.leg_size(lb)
        if sa != sb:
            raise GraphError(f"bond {la} -- {lb}: leg sizes must match, got {sa} and {sb}")
        self._bonded[la], self._bonded[lb] = lb, la
        self._g.add_edge(la.node, lb.node, legs=(la.name, lb.name), ends=(la.node, lb.node), size=sa)
        return self

    def set_outputs(self, axes: Mapping[str, Sequence[str | tuple[str, str]]]) -> TensorGraph:
        """Name the output axes: each fuses the given open legs row-major (first leg slowest)."""
        self._mutable("set outputs")
        outputs: dict[str, tuple[Leg, ...]] = {}
        axis_of: dict[Leg, str] = {}
        for axis, legs in axes.items():
            _check_name("axis", axis)
            if isinstance(legs, str) or (
                isinstance(legs, tuple) and len(legs) == 2 and all(isinstance(x, str) and "." not in x for x in legs)
            ):
                legs = [legs]  # a single leg: "node.leg" or (node, leg)
            refs = tuple(self.leg(leg) for leg in legs)
            if not refs:
                raise GraphError(f"output axis {axis!r} has no legs")
            for leg in refs:
                if leg in self._bonded:
                    raise GraphError(f"output axis {axis!r}: leg {leg} is bonded to {self._bonded[leg]}, not open")
                if leg in axis_of:
                    raise GraphError(f"leg {leg} is in two output axes: {axis_of[leg]!r} and {axis!r}")
                axis_of[leg] = axis
            outputs[axis] = refs
        self._outputs, self._axis_of = outputs, axis_of
        return self

    def freeze(self) -> TensorGraph:
        """Validate the graph and make it immutable; returns the graph itself."""
        if self._frozen:
            return self
        if not len(self._g):
            raise GraphError(f"graph {self.name!r} has no nodes")
        for name, leg_sizes in self.iter_legs():
            for leg in leg_sizes:
                ref = Leg(name, leg)
                if ref not in self._bonded and ref not in self._axis_of:
                    raise GraphError(
                        f"open leg {ref} (size {leg_sizes[leg]}) is in no output axis; "
                        f"bond it or name it in set_outputs (axes: {sorted(self._outputs)})"
                    )
        for name in self.delta_nodes():
            open_legs = [leg for leg in self.legs(name) if Leg(name, leg) not in self._bonded]
            if len(open_legs) > 1:
                raise GraphError(
                    f"delta node {name!r} has {len(open_legs)} open legs {open_legs}; a copy tensor may have at most one"
                )
        self._g.graph["outputs"] = {ax: [str(leg) for leg in legs] for ax, legs in self._outputs.items()}
        nx.freeze(self._g)
        self._frozen = True
        return self

    # ------------------------------------------------------------------ reading
    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def meta(self) -> dict[str, Any]:
        """Free-form, JSON-able facts about the graph that do not change its structure, such
        as the template that built it and its options (``meta["template"]``)."""
        return self._g.graph.setdefault("meta", {})

    @property
    def nx(self) -> nx.MultiGraph:
        """The backing networkx MultiGraph (frozen once the graph is)."""
        return self._g

    @property
    def nodes(self) -> list[str]:
        return list(self._g.nodes)

    def node(self, name: str) -> dict[str, Any]:
        """The attributes of node ``name``: legs, role, value, init."""
        if name not in self._g:
            raise GraphError(f"unknown node {name!r} in graph {self.name!r}; nodes: {self._short(self.nodes)}")
        return self._g.nodes[name]

    def nodes_with_role(self, role: Role) -> list[str]:
        return [n for n, r in self._g.nodes(data="role") if r == role]

    def delta_nodes(self) -> list[str]:
        """Fixed nodes whose value is the symbolic copy tensor ``"delta"`` (hyperedges)."""
        return [n for n, v in self._g.nodes(data="value") if v == "delta"]

    def legs(self, node: str) -> dict[str, int]:
        return dict(self.node(node)["legs"])

    def shape(self, node: str) -> tuple[int, ...]:
        return tuple(self.node(node)["legs"].values())

    def iter_legs(self) -> Iterable[tuple[str, dict[str, int]]]:
        yield from self._g.nodes(data="legs")

    def leg(self, ref: str | tuple[str, str] | Leg) -> Leg:
        """Parse ``"node.leg"`` (or a pair) and check that the leg exists."""
        if isinstance(ref, Leg):
            node, leg = ref.node, ref.name
        elif isinstance(ref, tuple) and len(ref) == 2:
            node, leg = ref
        elif isinstance(ref, str) and ref.count(".") == 1:
            node, leg = ref.split(".")
        else:
            raise GraphError(f"a leg is addressed as 'node.leg' or (node, leg), got {ref!r}")
        legs = self.node(node)["legs"]
        if leg not in legs:
            raise GraphError(f"node {node!r} has no leg {leg!r}; its legs: {list(legs)}")
        return Leg(node, leg)

    def leg_size(self, ref: str | tuple[str, str] | Leg) -> int:
        leg = self.leg(ref)
        return self._g.nodes[leg.node]["legs"][leg.name]

    def partner(self, ref: str | tuple[str, str] | Leg) -> Leg | None:
        """The leg bonded to ``ref``, or None when ``ref`` is open."""
        return self._bonded.get(self.leg(ref))

    @property
    def bonds(self) -> list[Bond]:
        out = []
        for u, v, data in self._g.edges(data=True):
            (nu, nv), (lu, lv) = data["ends"], data["legs"]
            out.append(Bond(Leg(nu, lu), Leg(nv, lv), data["size"]))
        return out

    @property
    def outputs(self) -> dict[str, tuple[Leg, ...]]:
        return dict(self._outputs)

    def axis_shape(self, axis: str) -> tuple[int, ...]:
        """Sizes of the legs fused into ``axis``, in order."""
        if axis not in self._outputs:
            raise GraphError(f"graph {self.name!r} has no output axis {axis!r}; axes: {list(self._outputs)}")
        return tuple(self.leg_size(leg) for leg in self._outputs[axis])

    @property
    def axis_sizes(self) -> dict[str, int]:
        """Each output axis and its fused size, in axis order (the order of ``dense()``'s dims)."""
        return {ax: math.prod(self.axis_shape(ax)) for ax in self._outputs}

    @property
    def num_params(self) -> int:
        """Number of trainable entries: the sizes of all ``param`` nodes."""
        return sum(math.prod(self.shape(n)) for n in self.nodes_with_role("param"))

    def structure_hash(self) -> str:
        """A hash of the geometry (legs, roles, bonds, axes), blind to values: plans are keyed by it."""
        if self._frozen and self._hash is not None:
            return self._hash
        data = self._structure_dict(values=False)
        digest = hashlib.sha1(json.dumps(data, sort_keys=False).encode()).hexdigest()[:16]
        if self._frozen:
            self._hash = digest
        return digest

    def _structure_dict(self, values: bool) -> dict[str, Any]:
        data = self.to_dict()
        if not values:
            data.pop("name", None)
            data["graph"]["graph"].pop("meta", None)
            for node in data["graph"]["nodes"]:
                if not isinstance(node.get("value"), str):
                    node.pop("value", None)
                node.pop("init", None)
        return data

    # ------------------------------------------------------------------ copy and serialisation
    def copy(self, name: str | None = None) -> TensorGraph:
        """An editable (unfrozen) copy."""
        return TensorGraph.from_dict(self.to_dict(), name=name, freeze=False)

    def to_dict(self) -> dict[str, Any]:
        graph = nx.MultiGraph(self._g) if self._frozen else self._g
        graph.graph["outputs"] = {ax: [str(leg) for leg in legs] for ax, legs in self._outputs.items()}
        if not graph.graph.get("meta", True):
            graph.graph.pop("meta")
        data = nx.node_link_data(graph, edges="edges")
        return {"schema": SCHEMA, "name": self.name, "graph": data}

    def to_json(self, path: str | Path | None = None, indent: int | None = None) -> str:
        """Serialise to JSON (networkx node-link data plus a schema version); write it if ``path``."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None, freeze: bool = True) -> TensorGraph:
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise SchemaError(f"graph data must have schema {SCHEMA!r}, got {got!r}")
        check_graph_dict(data)
        nxg = nx.node_link_graph(data["graph"], edges="edges", multigraph=True)
        g = cls(name or data.get("name", "tn"))
        for node, attrs in nxg.nodes(data=True):
            attrs = dict(attrs)
            legs, role, value = attrs.pop("legs"), attrs.pop("role"), attrs.pop("value", None)
            g.add_node(node, legs=legs, role=role, value=value, **attrs)
        for _, _, attrs in nxg.edges(data=True):
            (nu, nv), (lu, lv) = attrs["ends"], attrs["legs"]
            g.bond((nu, lu), (nv, lv))
        g.set_outputs(nxg.graph.get("outputs", {}))
        g.meta.update(nxg.graph.get("meta", {}))
        return g.freeze() if freeze else g

    @classmethod
    def from_json(cls, source: str | Path, freeze: bool = True) -> TensorGraph:
        """Read a graph from a JSON string or a path to a JSON file."""
        data = read_json(source, "graph")
        with in_source(source):
            return cls.from_dict(data, freeze=freeze)

    save = to_json
    load = from_json

    def draw(self, path: str | Path | None = None, **options: Any) -> Any:
        """Draw the network with matplotlib (see ``adtn.draw.draw``); returns the figure."""
        from .draw import draw

        return draw(self, path, **options)

    # ------------------------------------------------------------------ dunder
    def __contains__(self, node: object) -> bool:
        return node in self._g

    def __len__(self) -> int:
        return len(self._g)

    def __eq__(self, other: object) -> bool:
        """Same name, structure and fixed values (``meta`` is not compared)."""
        return isinstance(other, TensorGraph) and self._comparable() == other._comparable()

    def _comparable(self) -> dict[str, Any]:
        data = self.to_dict()
        data["graph"]["graph"].pop("meta", None)
        return data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        axes = ", ".join(f"{ax}={size}" for ax, size in self.axis_sizes.items())
        state = "frozen" if self._frozen else "open"
        return (
            f"TensorGraph({self.name!r}, nodes={len(self._g)}, bonds={self._g.number_of_edges()}, "
            f"axes=({axes}), params={self.num_params}, {state})"
        )

    @staticmethod
    def _short(names: Sequence[str], n: int = 12) -> str:
        return str(list(names[:n]))[:-1] + (", ...]" if len(names) > n else "]")


def read_json(source: str | Path, what: str = "structure") -> Any:
    """Parse ``source``: a JSON string (starting with '{') or a path to a JSON file."""
    text = str(source)
    if not text.lstrip().startswith("{"):
        path = Path(source)
        if not path.exists():
            raise SchemaError(f"{what} JSON: no such file {str(path)!r}")
        if not path.is_file():
            raise SchemaError(f"{what} JSON: {str(path)!r} is not a file")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise SchemaError(f"{what} JSON: file {str(path)!r} is binary, not text; expected a JSON file "
                              f"written by to_json (a model file goes to adtn.load)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SchemaError(f"{what} JSON could not be parsed ({source_label(source)}): {err}") from None


def _flatten(value: Any) -> Iterable[float]:
    if isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value

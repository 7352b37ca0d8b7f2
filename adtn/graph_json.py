"""Checks on graph JSON before it is built: a typo names the file, the node or edge, and the key.

``TensorGraph.from_dict`` builds a graph from networkx node-link data; without these checks
a misspelt key surfaces as ``KeyError: 'legs'`` deep inside the builder.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import AdtnError, SchemaError

__all__ = ["DEEP_KEYS", "check_graph_dict", "check_keys", "in_source", "source_label"]

TOP_KEYS = {"schema": True, "graph": True, "name": False}  # key -> required
LINK_KEYS = {"nodes": True, "edges": True, "directed": False, "multigraph": False, "graph": False}
NODE_KEYS = {"id": True, "legs": True, "role": True, "value": False, "init": False}
DEEP_KEYS = {"schema": True, "operators": True, "axes": True, "activation": True, "name": False, "meta": False,
             "negative_slope": False, "learn_scale": False, "scale": False, "options": False}
EDGE_KEYS = {"source": True, "target": True, "legs": True, "ends": True, "key": False, "size": False}


def _hint(key: str, known: Mapping[str, bool]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(where: str, entry: object, known: Mapping[str, bool], extra_ok: bool = False) -> dict[str, Any]:
    """``entry`` must be a dict holding every required key of ``known``; unknown keys are an error
    unless ``extra_ok`` (node metadata), where only near-misses of known keys are."""
    if not isinstance(entry, Mapping):
        raise SchemaError(f"{where}: expected an object with keys {list(known)}, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in known]
    suspicious = [k for k in unknown if _hint(k, known)] if extra_ok else unknown
    missing = [k for k, required in known.items() if required and k not in entry]
    if missing:
        found = f"; unknown keys {suspicious}" if suspicious else ""
        raise SchemaError(f"{where}: missing key {missing[0]!r}{found}; expected keys {list(known)}")
    if suspicious:
        key = suspicious[0]
        raise SchemaError(f"{where}: unknown key {key!r}{_hint(key, known)}; expected keys {list(known)}")
    return dict(entry)


def _pair(where: str, key: str, value: object) -> tuple[str, str]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise SchemaError(f"{where}: {key!r} must be a pair of names, got {value!r}")
    return value[0], value[1]


def check_graph_dict(data: Mapping[str, Any]) -> None:
    """Validate the keys of a graph dict (``TensorGraph.to_dict`` layout) before it is built."""
    check_keys("graph JSON", data, TOP_KEYS)
    link = check_keys("graph JSON 'graph'", data["graph"], LINK_KEYS)
    for part in ("nodes", "edges"):
        if not isinstance(link[part], list):
            raise SchemaError(f"graph JSON 'graph.{part}': expected a list, got {type(link[part]).__name__}")
    ids = set()
    for i, node in enumerate(link["nodes"]):
        name = node.get("id", f"#{i}") if isinstance(node, Mapping) else f"#{i}"
        entry = check_keys(f"node {name!r}", node, NODE_KEYS, extra_ok=True)
        if not isinstance(entry["legs"], Mapping):
            raise SchemaError(f"node {name!r}: 'legs' must be an object leg -> size, got {entry['legs']!r}")
        ids.add(entry["id"])
    for i, edge in enumerate(link["edges"]):
        where = f"edge #{i}"
        if isinstance(edge, Mapping) and {"source", "target"} <= set(edge):
            where = f"edge {edge['source']!r} -- {edge['target']!r}"
        entry = check_keys(where, edge, EDGE_KEYS)
        for end in ("source", "target"):
            if entry[end] not in ids:
                raise SchemaError(f"{where}: {end} {entry[end]!r} is not a node; nodes: {sorted(ids, key=str)}")
        ends = _pair(where, "ends", entry["ends"])
        _pair(where, "legs", entry["legs"])
        if sorted(ends) != sorted((entry["source"], entry["target"])):
            raise SchemaError(f"{where}: 'ends' {list(ends)} must name its source and target")


def source_label(source: str | Path) -> str:
    """How messages name where a JSON came from: the file path, or "JSON string"."""
    text = str(source)
    return "JSON string" if text.lstrip().startswith("{") else f"file {text!r}"


@contextmanager
def in_source(source: str | Path) -> Iterator[None]:
    """Prefix any adtn error raised inside with the file (or string) the data came from."""
    try:
        yield
    except AdtnError as err:
        raise type(err)(f"{source_label(source)}: {err}") from None

"""Load any declared structure (a TensorGraph or a deep ADTN) from JSON, by its schema."""

from __future__ import annotations

from pathlib import Path

from .errors import SchemaError
from .graph import SCHEMA as GRAPH_SCHEMA
from .graph import TensorGraph, read_json
from .graph_json import in_source
from .templates.adtn.structure import SCHEMA as DEEP_SCHEMA
from .templates.adtn.structure import DeepTN

__all__ = ["load_structure"]


def load_structure(source: str | Path) -> TensorGraph | DeepTN:
    """Read a JSON string or file written by ``TensorGraph.to_json`` or ``DeepTN.to_json``."""
    data = read_json(source)
    schema = data.get("schema") if isinstance(data, dict) else None
    with in_source(source):
        if schema == GRAPH_SCHEMA:
            return TensorGraph.from_dict(data)
        if schema == DEEP_SCHEMA:
            return DeepTN.from_dict(data)
        raise SchemaError(f"structure JSON: schema must be {GRAPH_SCHEMA!r} or {DEEP_SCHEMA!r}, got {schema!r}")

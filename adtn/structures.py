"""Load any declared structure (a TensorGraph or a deep ADTN) from JSON, by its schema."""

from __future__ import annotations

import json
from pathlib import Path

from .deep import SCHEMA as DEEP_SCHEMA
from .deep import DeepTN
from .errors import SchemaError
from .graph import SCHEMA as GRAPH_SCHEMA
from .graph import TensorGraph

__all__ = ["load_structure"]


def load_structure(source: str | Path) -> TensorGraph | DeepTN:
    """Read a JSON string or file written by ``TensorGraph.to_json`` or ``DeepTN.to_json``."""
    text = str(source)
    if not text.lstrip().startswith("{"):
        path = Path(source)
        if not path.exists():
            raise SchemaError(f"structure JSON: no such file {str(path)!r}")
        text = path.read_text()
    try:
        schema = json.loads(text).get("schema")
    except (json.JSONDecodeError, AttributeError) as err:
        raise SchemaError(f"structure JSON could not be parsed: {err}") from None
    if schema == GRAPH_SCHEMA:
        return TensorGraph.from_json(text)
    if schema == DEEP_SCHEMA:
        return DeepTN.from_json(text)
    raise SchemaError(f"structure JSON: schema must be {GRAPH_SCHEMA!r} or {DEEP_SCHEMA!r}, got {schema!r}")

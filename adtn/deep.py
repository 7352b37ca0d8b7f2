"""Moved to ``adtn.templates.adtn`` (``structure.py``, ``operators.py``, ``schedule.py``); kept for
one version so old imports and pickled .pt files load."""

from .templates.adtn.operators import (
    ACTIVATIONS,
    BOUNDARY,
    LAYOUTS,
    PREV,
    STATE,
    Activation,
    Layout,
    gate_pairs,
    num_legs,
    operator_graph,
    trace_gates,
)
from .templates.adtn.schedule import fused_schedule, windows
from .templates.adtn.structure import SCHEMA, DeepTN

__all__ = [
    "ACTIVATIONS",
    "BOUNDARY",
    "LAYOUTS",
    "PREV",
    "SCHEMA",
    "STATE",
    "Activation",
    "DeepTN",
    "Layout",
    "fused_schedule",
    "gate_pairs",
    "num_legs",
    "operator_graph",
    "trace_gates",
    "windows",
]

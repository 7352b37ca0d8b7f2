"""Deep ADTN (Qing et al., arXiv 2305.06058), all in one folder: a weight decoded by gate layers.

- ``template.py``: ``build`` (registered as ``"adtn"``), its options and parameter count;
- ``structure.py``: ``DeepTN``, the structure (operator graphs, activation, scale options);
- ``operators.py``, ``schedule.py``: one layer's operator graph, and its gates in fused windows;
- ``module.py``: ``DeepTNModule``, the compiled network (a ``TNNetwork``), with its gate init
  (``init.py``), kernels (``kernels.py``) and ``apply_split`` (``split.py``).

``adtn.deep`` and ``adtn.deep_module``, the old homes of the structure and the module, re-export
them for one version, so that old imports and pickled ``.pt`` files load.
"""

from .module import DeepTNModule, GateInit
from .operators import ACTIVATIONS, LAYOUTS, PREV, STATE, gate_pairs, num_legs, operator_graph, trace_gates
from .schedule import fused_schedule, windows
from .structure import SCHEMA, DeepTN
from .template import COLUMN_ORDERS, adtn_params, boundary_gates, build, check_options

__all__ = [
    "ACTIVATIONS",
    "COLUMN_ORDERS",
    "LAYOUTS",
    "PREV",
    "SCHEMA",
    "STATE",
    "DeepTN",
    "DeepTNModule",
    "GateInit",
    "adtn_params",
    "boundary_gates",
    "build",
    "check_options",
    "fused_schedule",
    "gate_pairs",
    "num_legs",
    "operator_graph",
    "trace_gates",
    "windows",
]

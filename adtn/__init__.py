"""adtn: compress neural networks with tensor networks, on one graph engine."""

from . import templates
from .api import encode, load, load_into, save
from .compiler import compile
from .compress import compress
from .deep import DeepTN
from .deep_module import DeepTNModule
from .errors import AdtnError, FrozenGraphError, GraphError, RankError, SchemaError, ShapeError, TemplateError
from .fitting import FitResult, fit
from .graph import TensorGraph
from .layers import TNConv1d, TNConv2d, TNLayer, TNLinear
from .module import TNModule
from .plan import Cost, Plan, clear_cache, plan, signature
from .report import LayerRow, Report
from .structures import load_structure
from .train import History, evaluate, finetune, setup_distributed
from .version import __version__  # noqa: F401  (adtn.__version__)

__all__ = [
    "AdtnError",
    "Cost",
    "DeepTN",
    "DeepTNModule",
    "FitResult",
    "FrozenGraphError",
    "GraphError",
    "History",
    "LayerRow",
    "Plan",
    "RankError",
    "Report",
    "SchemaError",
    "ShapeError",
    "TNConv1d",
    "TNConv2d",
    "TNLayer",
    "TNLinear",
    "TNModule",
    "TemplateError",
    "TensorGraph",
    "clear_cache",
    "compile",
    "compress",
    "encode",
    "evaluate",
    "finetune",
    "fit",
    "load",
    "load_into",
    "load_structure",
    "plan",
    "save",
    "setup_distributed",
    "signature",
    "templates",
]

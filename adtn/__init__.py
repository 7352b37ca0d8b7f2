"""adtn: compress neural networks with tensor networks, on one graph engine."""

from . import templates
from .api import encode, load, load_into, save
from .compiler import compile
from .compress import compress
from .errors import AdtnError, FrozenGraphError, GraphError, RankError, SchemaError, ShapeError, TemplateError
from .fitting import FitResult, fit
from .graph import TensorGraph
from .layers import TNConv1d, TNConv2d, TNLayer, TNLinear
from .module import TNModule
from .network import TNNetwork
from .plan import Cost, Plan, clear_cache, plan, signature
from .report import LayerRow, Report
from .structures import load_structure
from .templates.adtn import DeepTN, DeepTNModule
from .train import History, evaluate, finetune, setup_distributed
from .version import __version__  # noqa: F401  (adtn.__version__)

# Submodules that ``import adtn`` does not load (they pull in data files, the CLI, models):
# ``adtn.data`` / ``adtn.models`` import them on first use, so the package imports fast.
_LAZY = ("budget", "cli", "data", "draw", "initializers", "interop", "models", "structures", "testing")


def __getattr__(name: str):
    """Import a lazy submodule on first attribute access (PEP 562)."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'adtn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "TNNetwork",
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

"""Formats as graph builders, one folder each. Importing this package registers every built-in format.

A format is a ``Format`` (``registry.py``) declared by its folder's ``__init__``: build and
count (``build.py``), decompose (``decompose.py``), conv fast form (``conv.py``), shape-search
candidates (``search.py``) and whatever else it needs; nothing outside its folder names it.
"""

from .registry import (
    TEMPLATES,
    ConvForm,
    Format,
    Template,
    check_options,
    get,
    names,
    policy_members,
    register,
    template_of,
    unregister,
)

__all__ = ["TEMPLATES", "ConvForm", "Format", "Template", "check_options", "get", "names", "policy_members", "register",
           "template_of", "unregister"]

from . import adtn, cp, ht, kronecker, semi, semi_tucker, tt, tucker  # noqa: F401  (registers the formats)

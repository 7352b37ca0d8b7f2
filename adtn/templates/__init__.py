"""Formats as graph builders. Importing this package registers every built-in template."""

from .registry import TEMPLATES, Template, get, names, register

__all__ = ["TEMPLATES", "Template", "get", "names", "register"]

from . import cp, ht, kronecker, semi, semi_tucker, tt, tucker  # noqa: E402,F401  (registers the templates)

"""Formats as graph builders. Importing this package registers every built-in template."""

from .registry import TEMPLATES, Template, get, names, register, template_of

__all__ = ["TEMPLATES", "Template", "get", "names", "register", "template_of"]

from . import adtn, cp, ht, kronecker, semi, semi_tucker, tt, tucker  # noqa: F401  (registers the templates)

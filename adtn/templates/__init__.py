"""Formats as graph builders. Importing this package registers every built-in template."""

from .registry import TEMPLATES, Template, get, names, register

__all__ = ["TEMPLATES", "Template", "get", "names", "register"]

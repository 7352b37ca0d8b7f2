"""The template registry: formats are registered by name; a miss lists the valid names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TemplateError

__all__ = ["Template", "register", "get", "names", "TEMPLATES"]


@dataclass(frozen=True)
class Template:
    """A format: ``build(axes, **options)`` returns a TensorGraph (or DeepTN) whose output
    axes are exactly ``axes`` in order; ``formula(axes, **options)`` is the closed-form
    parameter count; ``init(graph, dense, **options)`` (optional) maps a dense weight to node
    tensors with the format's exact SVD-family initialiser; ``kinds`` says which weights it
    fits ("linear": axes out, in; "conv": out, in, kh, kw)."""

    name: str
    build: Callable[..., Any]
    formula: Callable[..., int] | None = None
    init: Callable[..., dict] | None = None
    kinds: tuple[str, ...] = ("linear", "conv")
    doc: str = ""


TEMPLATES: dict[str, Template] = {}


def register(
    name: str,
    *,
    formula: Callable[..., int] | None = None,
    init: Callable[..., dict] | None = None,
    kinds: tuple[str, ...] = ("linear", "conv"),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register("tt", formula=tt_params)`` on a template's build function."""

    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        doc = (build.__doc__ or "").strip().splitlines()[0] if build.__doc__ else ""
        TEMPLATES[name] = Template(name, build, formula, init, tuple(kinds), doc)
        return build

    return decorate


def get(name: str) -> Template:
    """The template registered as ``name``."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"template {name!r} not found; valid: {sorted(TEMPLATES)}") from None


def names() -> list[str]:
    """All registered template names, sorted."""
    return sorted(TEMPLATES)

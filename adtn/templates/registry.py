"""The template registry: formats are registered by name; a miss lists the valid names."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import TemplateError

__all__ = ["TEMPLATES", "Template", "get", "names", "register", "template_of"]


@dataclass(frozen=True)
class Template:
    """A format.

    ``build(axes, **options)`` returns a TensorGraph (or DeepTN) whose output axes are exactly
    ``axes`` in order. ``formula(axes, **options)`` is the closed-form parameter count.
    ``init(dense, axes, *, rank=None, tol=None, **options) -> (graph, tensors)`` (optional) is
    the format's SVD-family initialiser: it decomposes ``dense`` (shaped like ``axes``) at the
    given ranks, or at the smallest ranks reaching relative error ``tol``, and returns the
    graph it built plus ``{param node: tensor}``. ``kinds`` says which weights it fits
    ("linear": axes out, in; "conv": out, in, kh, kw). ``t_in_modes`` (semi-tensor formats):
    how many of the d in modes the factor ``t`` must divide, as d + t_in_modes, so that default
    modes are chosen (and the in axis padded) to fit."""

    name: str
    build: Callable[..., Any]
    formula: Callable[..., int] | None = None
    init: Callable[..., tuple[Any, dict]] | None = None
    kinds: tuple[str, ...] = ("linear", "conv")
    doc: str = ""
    t_in_modes: int | None = None


TEMPLATES: dict[str, Template] = {}


def register(
    name: str,
    *,
    formula: Callable[..., int] | None = None,
    init: Callable[..., tuple[Any, dict]] | None = None,
    kinds: tuple[str, ...] = ("linear", "conv"),
    t_in_modes: int | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register("tt", formula=tt_params)`` on a template's build function."""

    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        doc = (build.__doc__ or "").strip().splitlines()[0] if build.__doc__ else ""

        @functools.wraps(build)
        def stamped(axes: Mapping[str, int], *args: Any, **options: Any) -> Any:
            structure = build(axes, *args, **options)
            meta = getattr(structure, "meta", None)
            if isinstance(meta, dict):
                meta["template"] = {"name": name, "axes": dict(axes), "options": _jsonable(options)}
                structure._template_options = dict(options)
            return structure

        TEMPLATES[name] = Template(name, stamped, formula, init, tuple(kinds), doc, t_in_modes)
        return stamped

    return decorate


def _jsonable(value: Any) -> Any:
    """Options as JSON-able values: tuples become lists, non-string keys and unknown objects
    their repr. Exact python options are kept on the structure too (``_template_options``)."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else repr(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return json.loads(json.dumps(value, default=repr))


def template_of(structure: Any) -> tuple[Template, dict[str, Any]] | None:
    """The registered template that built ``structure`` and the options it was given, if known."""
    meta = getattr(structure, "meta", None) or {}
    stamp = meta.get("template") if isinstance(meta, dict) else None
    if not stamp or stamp.get("name") not in TEMPLATES:
        return None
    exact = getattr(structure, "_template_options", None)
    return TEMPLATES[stamp["name"]], dict(exact if exact is not None else stamp.get("options", {}))


def get(name: str) -> Template:
    """The template registered as ``name``."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"template {name!r} not found; valid: {sorted(TEMPLATES)}") from None


def names() -> list[str]:
    """All registered template names, sorted."""
    return sorted(TEMPLATES)

"""The format registry: a ``Format`` per template name holds everything the library knows about it.

Layers, the shape search, the budget search, ``compress`` and the reports ask the ``Format``
(its size knob, shape options, conv fast form, candidates, policies...) instead of comparing
template names, so a new format is one folder with one ``register`` call.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from ..errors import TemplateError

__all__ = ["TEMPLATES", "ConvForm", "Format", "Template", "build_params", "check_options", "get", "names",
           "policy_members", "register", "template_of", "unregister"]

INFER = "infer"  # a Format field left to be read from the build function's signature
SHAPE_OPTIONS = ("modes", "d", "factors", "kernel_with")  # build options that fix a network's shape
POLICY_KINDS = ("linear", "conv")


class ConvForm(Protocol):
    """A conv format's fast form: a sequence of small convolutions instead of a rebuilt kernel.

    ``name`` is what ``layer.flops`` / ``choose_forward`` report; ``applies(layer)`` says whether
    the layer's network has the form (exactly); ``cost(layer, n, h, w)`` is its ``Work`` on a
    2-D batch (N, C, H, W); ``run(layer, x)`` computes the conv (bias included) on such a batch.
    Where the generic low-rank form (U (out) x V (in, kh, kw): two convs) also applies, it is
    taken unless the form sets ``before_low_rank = True``."""

    name: str

    def applies(self, layer: Any) -> bool: ...

    def cost(self, layer: Any, n: int, h: int, w: int) -> Any: ...

    def run(self, layer: Any, x: Any) -> Any: ...


def build_params(build: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The build options ``build`` takes (its keyword parameters after the axes)."""
    sig = inspect.signature(build)
    return {n: p for n, p in list(sig.parameters.items())[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD}


@dataclass(frozen=True)
class Format:
    """A format (template): how to build, count, decompose, size, search and run it.

    Attributes:
        name: the registered name.
        build: ``build(axes, **options)`` -> a TensorGraph (or DeepTN) whose output axes are
            exactly ``axes`` in order.
        formula: the closed-form parameter count ``formula(axes, **options)`` (also ``count``).
        init: the SVD-family initialiser (also ``decompose``): ``init(dense, axes, *,
            rank=None, tol=None, **options) -> (graph, {param node: tensor})`` at the given ranks
            or at the smallest reaching relative error ``tol``.
        kinds: the weights it fits ("linear": axes out, in; "conv": out, in, kh, kw).
        doc: the first line of the build function's docstring.
        t_in_modes: semi-tensor formats: how many of the d in modes the factor ``t`` must divide,
            as d + t_in_modes, so that default modes are chosen (and the in axis padded) to fit.
        calibrated: the data-aware decompose ``(dense, axes, cov, **options) -> (graph, tensors)``;
            None: the generic one (whiten, decompose, refine; ``adtn.calibration.init``).
        knob: the option ``budget=`` sizes ("rank", "depth") or None; read from ``build``'s
            signature unless given.
        shape_options: build options that fix the shape (given, they turn the shape search off);
            read from the signature unless given.
        clip: whether ``clip=True`` lowers ranks larger than useful; read from the signature.
        candidates: the shape search's hook ``candidates(ctx) -> [Candidate]`` (``ctx``: an
            ``adtn.shapes.candidates.SearchContext``); None: not searchable.
        estimated: the search's screening error of this format is a model estimate, not a bound
            (the leader is decomposed for real on weights too big to decompose every finalist).
        alternatives: other shapes ``budget=`` may try when the default one cannot fill the
            budget: ``alternatives(axes, target, fill) -> iterator of option dicts``.
        policies: policy name -> layer kinds where ``compress`` policies include this format
            (``"auto"`` is the pool ``auto`` tries; ``"auto_always"`` joins it even when the
            caller restricts ``candidates=``).
        policy_order: policy name -> rank among its members (default 0; then by name): the
            order ``compress`` tries them in, which breaks ties between equal errors.
        conv_form: the conv fast form (a ``ConvForm``) or None.
        example: a small readable ``(axes, options)`` for tests and docs.
    """

    name: str
    build: Callable[..., Any]
    formula: Callable[..., int] | None = None
    init: Callable[..., tuple[Any, dict]] | None = None
    kinds: tuple[str, ...] = ("linear", "conv")
    doc: str = ""
    t_in_modes: int | None = None
    calibrated: Callable[..., tuple[Any, dict]] | None = None
    knob: str | None = INFER
    shape_options: tuple[str, ...] | None = None
    clip: bool | None = None
    candidates: Callable[[Any], list] | None = None
    estimated: bool = False
    alternatives: Callable[..., Iterator[dict[str, Any]]] | None = None
    policies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    policy_order: Mapping[str, int] = field(default_factory=dict)
    conv_form: ConvForm | None = None
    example: tuple[dict[str, int], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        params = build_params(self.build)
        if self.knob == INFER:
            object.__setattr__(self, "knob", "rank" if "rank" in params else "depth" if "depth" in params else None)
        if self.shape_options is None:
            object.__setattr__(self, "shape_options", tuple(k for k in SHAPE_OPTIONS if k in params))
        if self.clip is None:
            object.__setattr__(self, "clip", "clip" in params)
        for policy, kinds in self.policies.items():
            if not isinstance(kinds, tuple) or not set(kinds) <= set(POLICY_KINDS):
                raise TemplateError(f"format {self.name!r}: policies[{policy!r}] must be a tuple of layer kinds "
                                    f"from {list(POLICY_KINDS)}, got {kinds!r}")
        object.__setattr__(self, "policies", MappingProxyType(dict(self.policies)))
        object.__setattr__(self, "policy_order", MappingProxyType(dict(self.policy_order)))
        object.__setattr__(self, "kinds", tuple(self.kinds))

    @property
    def count(self) -> Callable[..., int] | None:
        """The closed-form parameter count (the field ``formula``)."""
        return self.formula

    @property
    def decompose(self) -> Callable[..., tuple[Any, dict]] | None:
        """The SVD-family initialiser (the field ``init``)."""
        return self.init

    @property
    def searchable(self) -> bool:
        """Whether the shape search (``adtn.shapes.search``) has candidates for it."""
        return self.candidates is not None

    def params(self) -> dict[str, inspect.Parameter]:
        """The build options it takes."""
        return build_params(self.build)

    def joins(self, policy: str, kind: str) -> bool:
        """Whether ``compress``'s ``policy`` includes this format on ``kind`` layers."""
        return kind in self.kinds and kind in self.policies.get(policy, ())

    def forced(self, options: Mapping[str, Any], modes: Any = None) -> bool:
        """Whether ``options`` (and ``modes``) fix the shape, so that no shape is searched."""
        return modes is not None or any(options.get(k) is not None for k in self.shape_options)


Template = Format  # the old name

TEMPLATES: dict[str, Format] = {}


def register(
    name: str,
    *,
    formula: Callable[..., int] | None = None,
    init: Callable[..., tuple[Any, dict]] | None = None,
    kinds: tuple[str, ...] = ("linear", "conv"),
    t_in_modes: int | None = None,
    **fields: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register("tt", formula=tt_params, init=init_tt, ...)`` on a format's build
    function; ``fields`` are the other ``Format`` fields (``count=`` / ``decompose=`` may stand
    for ``formula=`` / ``init=``)."""
    formula = fields.pop("count", formula)
    init = fields.pop("decompose", init)
    unknown = set(fields) - set(Format.__dataclass_fields__) - {"name", "build", "doc"}
    if unknown:
        raise TemplateError(f"register({name!r}): unknown Format fields {sorted(unknown)}; valid: "
                            f"{sorted(set(Format.__dataclass_fields__) - {'name', 'build', 'doc'})}")

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

        TEMPLATES[name] = Format(name, stamped, formula, init, tuple(kinds), doc, t_in_modes, **fields)
        return stamped

    return decorate


def unregister(name: str) -> Format:
    """Remove the format registered as ``name`` (a test's or a plugin's) and return it."""
    get(name)
    return TEMPLATES.pop(name)


def _jsonable(value: Any) -> Any:
    """Options as JSON-able values: tuples become lists, non-string keys and unknown objects
    their repr. Exact python options are kept on the structure too (``_template_options``)."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else repr(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return json.loads(json.dumps(value, default=repr))


def template_of(structure: Any) -> tuple[Format, dict[str, Any]] | None:
    """The registered format that built ``structure`` and the options it was given, if known."""
    meta = getattr(structure, "meta", None) or {}
    stamp = meta.get("template") if isinstance(meta, dict) else None
    if not stamp or stamp.get("name") not in TEMPLATES:
        return None
    exact = getattr(structure, "_template_options", None)
    return TEMPLATES[stamp["name"]], dict(exact if exact is not None else stamp.get("options", {}))


def get(name: str) -> Format:
    """The format registered as ``name``."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"template {name!r} not found; valid: {sorted(TEMPLATES)}") from None


def check_options(where: str, templates: Iterable[str], options: Mapping[str, Any],
                  allowed: Iterable[str] = ()) -> None:
    """A ``TemplateError`` naming every key of ``options`` that none of ``templates`` builds with and
    that is not in ``allowed`` (the caller's own options): a misspelt option must not reach a
    formula as a bare ``TypeError``, nor be silently dropped by a policy that picks formats."""
    templates = list(templates)
    valid = set(allowed)
    for name in templates:
        valid.update(get(name).params())
    unknown = sorted(set(options) - valid)
    if unknown:
        which = templates[0] if len(templates) == 1 else f"any of {', '.join(templates)}"
        raise TemplateError(f"{where}: unknown option(s) {unknown} for {which}; valid: {sorted(valid)}")


def names() -> list[str]:
    """All registered template names, sorted."""
    return sorted(TEMPLATES)


def policy_members(policy: str, kind: str) -> list[str]:
    """The registered formats that ``policy`` includes on ``kind`` layers, by ``policy_order`` then name."""
    members = [n for n in names() if TEMPLATES[n].joins(policy, kind)]
    return sorted(members, key=lambda n: TEMPLATES[n].policy_order.get(policy, 0))

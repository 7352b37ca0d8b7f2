"""The option language of ``encode``, the layers' constructors, the shape search and ``compress``.

``resolve`` turns ``template``, ``rank`` / ``depth`` / ``budget`` / ``tol`` and ``modes`` into a
``Spec``: a template, padded axes and build options. It sits below the layers and the shape
search, which both use it (imports run one way, checked by tests/test_imports.py), and above the templates.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .budget import FILL, effective_ranks, fill_ranks, knob_for_budget
from .errors import AdtnError, RankError, ShapeError, TemplateError
from .templates import Template, get, names
from .templates.factor import default_modes, divisible_modes, factorize, is_int
from .templates.registry import build_params

__all__ = ["Spec", "balanced", "check_budget", "resolve", "template_params", "true_ranks"]

# ---------------------------------------------------------------------- options -> structure
@dataclass(frozen=True)
class Spec:
    """A template with the axes (padded where needed) and build options it is called with."""

    template: Template
    axes: dict[str, int]
    kwargs: dict[str, Any]

    def build(self) -> Any:
        return self.template.build(self.axes, **self.kwargs)


def template_params(t: Template) -> dict[str, inspect.Parameter]:
    """The build options ``t`` takes (its keyword parameters after the axes)."""
    return build_params(t.build)


def balanced(n: int, d: int) -> tuple[int, tuple[int, ...]]:
    """The smallest size >= n whose d balanced modes are not lopsided (a prime n gets padded)."""
    for size in range(n, 2 * n + 2):
        modes = factorize(size, d)
        if d == 1 or modes[0] <= 2 * math.ceil(size ** (1.0 / d) - 1e-9):
            return size, modes
    return n, factorize(n, d)  # pragma: no cover - a power of two lies in [n, 2n]


def _modes(where: str, axes: dict[str, int], modes: Any, d: int | None, nouns: Mapping[str, str]):
    """(padded axes, (out_modes, in_modes)): the user's modes checked, or balanced ones."""
    out, inn = list(axes)[:2]
    if modes is not None:
        if isinstance(modes, Mapping) and set(modes) == {out, inn}:
            pair = (modes[out], modes[inn])
        elif isinstance(modes, Sequence) and not isinstance(modes, str) and len(modes) == 2:
            pair = tuple(modes)
        else:
            raise ShapeError(f"{where}: modes must be a pair (out_modes, in_modes) or a dict by axis, got {modes!r}")
        for ax, m in zip((out, inn), pair):
            if not isinstance(m, Sequence) or not all(isinstance(k, numbers.Integral) and k > 0 for k in m):
                raise ShapeError(f"{where}: {ax} modes must be a sequence of positive integers, got {m!r}")
            if math.prod(m) != axes[ax]:
                raise ShapeError(
                    f"{where}: {ax} modes {tuple(m)} multiply to {math.prod(m)}, but the layer has "
                    f"{axes[ax]} {nouns[ax]}"
                )
        return dict(axes), (tuple(int(k) for k in pair[0]), tuple(int(k) for k in pair[1]))
    if d is None:
        d = max(2, len(default_modes(axes)[out]))
    (n_out, m_out), (n_in, m_in) = balanced(axes[out], d), balanced(axes[inn], d)
    return {**axes, out: n_out, inn: n_in}, (m_out, m_in)


def _sized(where: str, t: Template, axes: dict[str, int], kwargs: dict, knob: str, budget: float,
           dense: int) -> dict:
    """``kwargs`` with the size (uniform knob, then per-bond top-up) for ``budget`` of ``dense``."""
    kwargs = {**kwargs, knob: knob_for_budget(where, t, axes, knob, kwargs, budget, dense)}
    if knob == "rank":
        kwargs["rank"] = fill_ranks(t, axes, kwargs, budget * dense)
    return kwargs


def _shape_alternatives(where: str, t: Template, raw: dict[str, int], kwargs: dict, d_default: int | None,
                        nouns: Mapping[str, str], target: float):
    """Other shapes for a budget the default shape cannot fill: other numbers of modes, the
    format's ``alternatives`` (Kronecker splits; only when the user fixed neither)."""
    params = template_params(t)
    if "modes" in params and d_default is not None:
        for d in sorted(range(2, 7), key=lambda k: (abs(k - d_default), k)):
            if d != d_default:
                axes, modes = _modes(where, raw, None, d, nouns)
                yield axes, {**kwargs, "modes": modes}
    if t.alternatives is not None and not t.forced(kwargs):
        for options in itertools.islice(t.alternatives(raw, target, FILL), 24):
            yield raw, {**kwargs, **options}


def _budget_spec(where: str, t: Template, axes: dict[str, int], kwargs: dict, knob: str, budget: float, dense: int,
                 alternatives) -> tuple[dict[str, int], dict]:
    """(axes, kwargs) whose count is <= budget * dense and, when any tried shape allows, >= 90% of it."""
    target = budget * dense
    try:
        kwargs = _sized(where, t, axes, kwargs, knob, budget, dense)  # the default shape
        best = (t.formula(axes, **kwargs), axes, kwargs)
    except AdtnError as err:
        first_error, best = err, (0, axes, kwargs)
    if best[0] < FILL * target:
        for ax, kw in alternatives:
            try:
                kw = _sized(where, t, ax, kw, knob, budget, dense)
            except AdtnError:
                continue
            p = t.formula(ax, **kw)
            if p >= FILL * target or (best[0] == 0 and p > 0):  # another shape only when it fills the budget
                best = (p, ax, kw)                                # (or the default shape has no valid size)
            if p >= FILL * target:
                break
    if best[0] == 0:
        raise first_error
    if best[0] < FILL * target:
        warnings.warn(f"{where}: no {t.name!r} size fills budget {budget} well: the closest count below it is "
                      f"{best[0]:,} of {target:,.0f} parameters ({best[0] / target:.0%}; the promise is >= "
                      f"{FILL:.0%}), the next sizes up exceed the budget", stacklevel=4)
    return best[1], effective_ranks(t, best[1], best[2])


def check_budget(where: str, budget: Any) -> None:
    """A budget is a fraction of the dense parameters in (0, 1]: more than the dense layer is no compression."""
    if (isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not math.isfinite(budget)
            or not 0 < budget <= 1):
        raise RankError(f"{where}: budget is a fraction of the dense parameters, in (0, 1], got {budget!r}")


def true_ranks(t: Template, axes: dict[str, int], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` whose one int rank (a cap under ``clip``) is replaced by the ranks the network
    really gets when some bond cannot use it: per bond (a list or tuple, where the template takes
    one and gives the same graph), else the smallest int giving the same graph. Unchanged when
    every bond gets the rank, so ``rank=`` and the repr say what the network has."""
    rank = kwargs.get("rank")
    if not kwargs.get("clip") or not is_int(rank) or rank <= 1:
        return kwargs

    def structure(r: Any) -> str | None:
        try:
            return t.build(axes, **{**kwargs, "rank": r}).structure_hash()
        except (AdtnError, TypeError, ValueError):
            return None

    want = structure(rank)
    if want is None:
        return kwargs
    for n in range(1, 9):
        for seq in (list, tuple):
            if structure(seq([rank] * n)) == want:
                per_bond = effective_ranks(t, axes, {**kwargs, "rank": seq([rank] * n)})
                return kwargs if all(r == rank for r in per_bond["rank"]) else per_bond
    lo, hi = 1, rank  # no per-bond form: the smallest uniform cap giving this graph
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if structure(mid) == want else (mid + 1, hi)
    return {**kwargs, "rank": lo}


def _semi_modes(axes: dict[str, int], raw: Mapping[str, int], modes: tuple, t: int, offset: int):
    """Balanced default in modes made divisible by t where the semi-tensor bonds need it (padded if needed)."""
    inn = list(axes)[1]
    d = len(modes[1])
    k = max(0, d + offset)
    if t <= 1 or all(m % t == 0 for m in modes[1][:k]):
        return axes, modes
    size, in_modes = divisible_modes(raw[inn], d, t, k)
    return {**axes, inn: size}, (modes[0], in_modes)


def resolve(
    where: str,
    template: str,
    axes: Mapping[str, int],
    kind: str,
    *,
    rank: Any = None,
    depth: int | None = None,
    budget: float | None = None,
    modes: Any = None,
    tol: float | None = None,
    options: Mapping[str, Any] | None = None,
    nouns: Mapping[str, str] | None = None,
) -> Spec:
    """Turn a layer's options into a template, padded axes and build options.

    ``budget`` picks the largest uniform rank (or depth, for templates sized by depth) whose
    closed-form parameter count is at most ``budget`` times the dense weight's; with ``tol``
    the size is left to the template's initialiser.
    """
    t = get(template)
    if kind not in t.kinds:
        fits = [n for n in names() if kind in get(n).kinds]
        raise TemplateError(f"{where}: template {t.name!r} does not fit {kind} weights; templates for {kind}: {fits}")
    params = template_params(t)
    knob = t.knob
    kwargs = dict(options or {})
    axes = dict(axes)
    dense = math.prod(axes.values())
    for name, value in (("rank", rank), ("depth", depth)):
        if value is not None and name not in params:
            size = f"its size is set by {knob}= or budget=" if knob else "it has no size option"
            raise TemplateError(f"{where}: template {t.name!r} takes no {name}=; {size}")
    given = {k: v for k, v in (("rank", rank), ("depth", depth), ("budget", budget), ("tol", tol)) if v is not None}
    sizing = [k for k in given if k in (knob, "budget", "tol")]
    if len(sizing) > 1:
        raise RankError(f"{where}: give one of {knob}=, budget= or tol=, got " + ", ".join(f"{k}={given[k]!r}"
                                                                                        for k in sizing))
    raw, nouns = dict(axes), nouns or {ax: f"{ax} features" for ax in axes}
    d_default = None  # the number of modes a budget may change: only when the user fixed no shape
    if "modes" in params:
        d = kwargs.pop("d", None) if "d" in params else None
        axes, kwargs["modes"] = _modes(where, axes, modes, d, nouns)
        if modes is None and "t" in params and t.t_in_modes is not None:
            axes, kwargs["modes"] = _semi_modes(axes, raw, kwargs["modes"], int(kwargs.get("t", 2)), t.t_in_modes)
        if modes is None and d is None:
            d_default = len(kwargs["modes"][0])
    elif modes is not None:
        takers = [n for n in names() if "modes" in template_params(get(n))]
        raise TemplateError(f"{where}: template {t.name!r} takes no modes=; templates with modes: {takers}")
    if depth is not None and knob != "depth":
        kwargs["depth"] = depth
    if budget is not None:
        check_budget(where, budget)
        if knob is None or t.formula is None:
            raise TemplateError(f"{where}: budget= needs template {t.name!r} to have a size option and a "
                                "parameter formula; pass its options directly")
        if t.clip:  # sizes the search tries may exceed a bond's useful rank: clipped, not errors
            kwargs.setdefault("clip", True)
        alternatives = _shape_alternatives(where, t, raw, kwargs, d_default, nouns, float(budget) * dense)
        axes, kwargs = _budget_spec(where, t, axes, kwargs, knob, float(budget), dense, alternatives)
    elif knob is not None and given.get(knob) is not None:
        kwargs[knob] = given[knob]
        if knob == "rank" and t.clip and is_int(given[knob]):
            # one int rank for all bonds is a cap, as in tensorly: bonds that cannot use it (a 3x3
            # kernel's, a 1x1 conv's spatial core) get their largest useful rank. Ranks given per
            # bond stay strict, and so do the templates' own builders
            kwargs.setdefault("clip", True)
            kwargs = true_ranks(t, axes, kwargs)
    elif knob is not None and tol is None and params[knob].default is inspect.Parameter.empty:
        raise RankError(f"{where}: template {t.name!r} needs a size: pass {knob}=, budget= (a fraction of the "
                        "dense parameters) or tol=")
    return Spec(t, axes, kwargs)



# ---------------------------------------------------------------------- dense weight -> tensors

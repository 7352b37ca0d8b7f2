"""The user-facing entry points: ``encode`` a torch layer as a TN layer; ``save`` / ``load`` compressed models.

Also the option language they share with the layers' constructors: ``resolve`` turns
``template``, ``rank`` / ``depth`` / ``budget`` / ``tol`` and ``modes`` into a template, padded
axes and build options; ``initialize`` sets a layer's network from a dense weight.

    layer = adtn.encode(nn.Linear(4096, 4096), template="adtn", depth=1)
    layer = adtn.encode(conv, template="kronecker", rank=8)
    layer = adtn.encode(linear, template="tt", budget=0.05, init="decompose")
    adtn.save(model, "model.pt"); model = adtn.load_into(Net(), "model.pt")  # or adtn.load("model.pt")
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .budget import FILL, effective_ranks, kronecker_splits
from .budget import fill_ranks as _fill_budget
from .budget import knob_for_budget as _knob_for_budget
from .errors import AdtnError, RankError, ShapeError, TemplateError
from .graph import TensorGraph
from .templates import Template, get, names
from .templates.factor import _is_int, default_modes, divisible_modes, factorize

if TYPE_CHECKING:
    from .layers import TNLayer

__all__ = ["FORMAT", "INITS", "OversizeWarning", "Spec", "check_budget", "encode", "initialize", "load", "load_into",
           "match_norm", "resolve", "save", "true_ranks"]

SUPPORTED = "nn.Linear, nn.Conv1d, nn.Conv2d"
INITS = ("auto", "decompose", "fit", "random")


# ---------------------------------------------------------------------- options -> structure
@dataclass(frozen=True)
class Spec:
    """A template with the axes (padded where needed) and build options it is called with."""

    template: Template
    axes: dict[str, int]
    kwargs: dict[str, Any]

    def build(self) -> Any:
        return self.template.build(self.axes, **self.kwargs)


def _template_params(t: Template) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(t.build)
    return {n: p for n, p in list(sig.parameters.items())[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD}


def _balanced(n: int, d: int) -> tuple[int, tuple[int, ...]]:
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
    (n_out, m_out), (n_in, m_in) = _balanced(axes[out], d), _balanced(axes[inn], d)
    return {**axes, out: n_out, inn: n_in}, (m_out, m_in)


def _sized(where: str, t: Template, axes: dict[str, int], kwargs: dict, knob: str, budget: float,
           dense: int) -> dict:
    """``kwargs`` with the size (uniform knob, then per-bond top-up) for ``budget`` of ``dense``."""
    kwargs = {**kwargs, knob: _knob_for_budget(where, t, axes, knob, kwargs, budget, dense)}
    if knob == "rank":
        kwargs["rank"] = _fill_budget(t, axes, kwargs, budget * dense)
    return kwargs


def _shape_alternatives(where: str, t: Template, raw: dict[str, int], kwargs: dict, d_default: int | None,
                        nouns: Mapping[str, str], target: float):
    """Other shapes for a budget the default shape cannot fill: other numbers of modes, other
    Kronecker splits (only when the user fixed neither)."""
    params = _template_params(t)
    if "modes" in params and d_default is not None:
        for d in sorted(range(2, 7), key=lambda k: (abs(k - d_default), k)):
            if d != d_default:
                axes, modes = _modes(where, raw, None, d, nouns)
                yield axes, {**kwargs, "modes": modes}
    if "factors" in params and kwargs.get("factors") is None:
        for options in itertools.islice(kronecker_splits(raw, target), 24):
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
    if not kwargs.get("clip") or not _is_int(rank) or rank <= 1:
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
    params = _template_params(t)
    knob = "rank" if "rank" in params else "depth" if "depth" in params else None
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
        takers = [n for n in names() if "modes" in _template_params(get(n))]
        raise TemplateError(f"{where}: template {t.name!r} takes no modes=; templates with modes: {takers}")
    if depth is not None and knob != "depth":
        kwargs["depth"] = depth
    if budget is not None:
        check_budget(where, budget)
        if knob is None or t.formula is None:
            raise TemplateError(f"{where}: budget= needs template {t.name!r} to have a size option and a "
                                "parameter formula; pass its options directly")
        if "clip" in params:  # sizes the search tries may exceed a bond's useful rank: clipped, not errors
            kwargs.setdefault("clip", True)
        alternatives = _shape_alternatives(where, t, raw, kwargs, d_default, nouns, float(budget) * dense)
        axes, kwargs = _budget_spec(where, t, axes, kwargs, knob, float(budget), dense, alternatives)
    elif knob is not None and given.get(knob) is not None:
        kwargs[knob] = given[knob]
        if knob == "rank" and "clip" in params and _is_int(given[knob]):
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
def _same_structure(a: Any, b: Any) -> bool:
    if isinstance(a, TensorGraph) and isinstance(b, TensorGraph):
        return a.structure_hash() == b.structure_hash()
    return a == b


POOR_FIT = 0.5  # a fitted init with a larger relative weight error is reported


def initialize(layer: TNLayer, dense: torch.Tensor, init: str = "auto", fit_options: Mapping | None = None,
               calibration: Any = None) -> None:
    """Set ``layer.tn`` from a dense weight, in place.

    ``"auto"``: the template's SVD-family initialiser when it has one; a deep ADTN (no
    initialiser, and fitting one is slow and rarely gets close) starts random; any other
    network is fitted (``adtn.fit``). ``"decompose"``: the initialiser or an error; ``"fit"``:
    gradient descent, with a progress bar on a terminal; ``"random"``: the layer's random
    network scaled to the dense weight's Frobenius norm, so that on inputs of unit variance its
    outputs have the dense layer's variance. ``calibration`` (an ``adtn.calibration.Covariance``
    of the layer's inputs): the initialiser or the fit minimises the output error on them
    instead of the weight error (``adtn.calibration.init``).
    """
    if init not in INITS:
        raise AdtnError(f"init must be one of {list(INITS)}, got {init!r}")
    if init == "auto" and not isinstance(layer.structure, TensorGraph):  # a DeepTN
        init = "random"
    if init == "random":
        match_norm(layer, dense)
        return
    target = layer.pad_weight(dense.detach())
    t = get(layer.template) if layer.template is not None else None  # None: the user's own graph
    name = repr(t.name) if t is not None else "None (a user graph)"
    cov = None
    if calibration is not None:
        from .calibration.init import fit_covariance

        cov = fit_covariance(calibration, layer.axes, layer.tn_axes)
    if init in ("auto", "decompose") and t is not None and t.init is not None:
        if cov is not None:
            from .calibration.init import calibrated_init

            graph, tensors = calibrated_init(t.name, target, layer.tn_axes, cov, **layer.template_options)
        else:
            graph, tensors = t.init(target, layer.tn_axes, **layer.template_options)
        if not _same_structure(graph, layer.structure):
            raise AdtnError(f"{type(layer).__name__}: template {t.name!r} initialised a different structure than "
                            f"the layer's ({graph} vs {layer.structure}); options {layer.template_options}")
        layer.load_node_tensors(tensors)
        return
    if init == "decompose":
        raise AdtnError(f"{type(layer).__name__}: init='decompose' needs an SVD-family initialiser, and template "
                        f"{name} has none; use init='fit' (gradient descent) or 'auto'")
    from .fitting import fit

    options = {"progress": None, **dict(fit_options or {})}  # None: a bar on a terminal only
    if cov is not None:
        from .calibration.init import metric

        options["metric"] = metric(cov)
    result = fit(layer.tn, target.to(dtype=layer.tn.dtype, device=layer.tn.device), **options)
    if result.rel_error > POOR_FIT:
        warnings.warn(f"{type(layer).__name__}: fitting {name} to the weight stopped at relative error "
                      f"{result.rel_error:.3f} ({result.stop} after {result.steps} steps): the layer does not "
                      "reproduce the dense one; train it (adtn.finetune, distillation from the dense model) or pass "
                      "init='random' to skip the fit", stacklevel=3)


@torch.no_grad()
def match_norm(layer: TNLayer, dense: torch.Tensor) -> None:
    """Scale ``layer``'s network so that its (cropped) weight has the Frobenius norm of ``dense``:
    E|Wx|^2 = |W|_F^2 for inputs of unit variance, so the outputs get the dense layer's variance.
    Multiplies one parameter node (the scale buffer of a deep ADTN), which scales every entry."""
    if dense.is_meta or layer.weight.is_meta:
        return
    have, want = torch.linalg.vector_norm(layer.dense_weight().detach()), torch.linalg.vector_norm(dense.detach())
    if not (torch.isfinite(have) and torch.isfinite(want) and have > 0 and want > 0):
        return
    factor = float(want / have)
    scale = getattr(layer.tn, "scale", None)
    if isinstance(scale, torch.Tensor):  # DeepTNModule: the fixed global scale
        scale.mul_(factor)
        return
    params = list(layer.tn.parameters())
    if params:
        params[0].mul_(factor)


def is_lazy(layer: nn.Module) -> bool:
    """True for a lazy layer (``nn.LazyLinear``, ...) whose weight has no shape until its first forward."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in layer.parameters(recurse=False))


def encode(
    layer: nn.Module,
    template: str = "adtn",
    *,
    depth: int | None = None,
    rank: Any = None,
    budget: float | None = None,
    tol: float | None = None,
    modes: Any = None,
    init: str = "auto",
    forward: str = "auto",
    fit_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> TNLayer:
    """A drop-in TN layer approximating ``layer`` (``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``).

    Args:
        layer: the torch layer; its weight initialises the network, its bias is copied.
        template: a registered template (``adtn.templates.names()``).
        depth, rank: the template's size, whichever it takes.
        budget: instead, a fraction of the dense weight's parameters, in (0, 1]: the largest
            uniform rank (or depth) whose closed-form parameter count fits in it.
        tol: instead, a relative Frobenius error; the template's SVD-family initialiser picks
            the smallest ranks reaching it (needs ``init`` "auto" or "decompose"), in a searched
            shape for the searchable templates (``adtn.tolerance``).
        modes: ``(out_modes, in_modes)`` for templates that split axes into modes; balanced
            when None, a badly factorable (prime) size zero-padded.
        init: ``"auto"`` (the template's initialiser if any; a deep ADTN starts random; a user
            graph is fitted), ``"decompose"`` (the initialiser, or an error), ``"fit"`` (gradient
            descent, a progress bar on a terminal), or ``"random"`` (scaled to the weight's norm,
            so the outputs keep the dense layer's variance).
        forward: ``"auto"`` (cheaper of rebuild and streaming, per input shape), ``"dense"``, ``"direct"``.
        fit_options: keyword arguments of ``adtn.fit`` when fitting runs.
        **options: further template options, and two layer options: ``shape`` (``"auto"``:
            search the factorization (modes, Kronecker split, t) with the lowest error; the
            default under ``budget=`` for tt, tr, ht, kronecker, semi_tt and semi_tr when no
            ``modes=`` / ``factors=`` / ``d=`` is given; ``"default"`` keeps the fixed rule) and
            ``calibration`` (a batch of this layer's inputs: the search ranks shapes by output
            error on it instead of weight error).

    Returns:
        A ``TNLinear``, ``TNConv1d`` or ``TNConv2d`` on the layer's device and dtype; an
        ``OversizeWarning`` says when it holds more parameters than ``layer``'s weight.
    """
    from .layers import TNConv1d, TNConv2d, TNLayer, TNLinear

    kw = {"depth": depth, "rank": rank, "budget": budget, "tol": tol, "modes": modes, "init": init,
          "forward": forward, "fit_options": fit_options, **options}
    if budget is not None:
        check_budget("encode", budget)
    if isinstance(layer, TNLayer):
        raise AdtnError(f"encode: {type(layer).__name__} is already a TN layer")
    if is_lazy(layer):
        raise AdtnError(f"encode: {type(layer).__name__} is a lazy layer whose weight is not initialised yet; "
                        "run one forward pass first")
    if isinstance(layer, nn.Linear):
        out = TNLinear.from_linear(layer, template, **kw)
    elif isinstance(layer, nn.Conv2d):
        out = TNConv2d.from_conv2d(layer, template, **kw)
    elif isinstance(layer, nn.Conv1d):
        out = TNConv1d.from_conv1d(layer, template, **kw)
    else:
        kind = type(layer)
        name = f"nn.{kind.__name__}" if kind.__module__.startswith("torch.nn") else kind.__name__
        raise AdtnError(f"encode: {name} is not supported; supported: {SUPPORTED}")
    _warn_oversize(layer, out)
    return out


class OversizeWarning(UserWarning):
    """A TN layer with more parameters than the dense weight it replaces."""


def _warn_oversize(dense: nn.Module, layer: TNLayer) -> None:
    n, full = layer.num_tn_params, dense.weight.numel()
    if n <= full:
        return
    options = ", ".join(f"{k}={v!r}" for k, v in layer.template_options.items() if k != "clip")
    warnings.warn(f"encode: {type(dense).__name__} weight {tuple(dense.weight.shape)} as template "
                  f"{layer.template!r} ({options}) has {n:,} parameters, {n / full:.2f}x the dense weight's {full:,}: "
                  "larger than the layer it replaces; pass a smaller rank= or depth=, a budget= in (0, 1] or a "
                  "looser tol=", OversizeWarning, stacklevel=3)


# saving lives in manifest.py; imported last, as it builds on the layers that import this module
from .manifest import FORMAT, load, load_into, save

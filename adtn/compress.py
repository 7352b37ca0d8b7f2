"""Whole-model compression: ``compress`` walks a model and encodes every layer a policy selects.

    model, report = adtn.compress(model, policy="hybrid", budget=0.1, calibration=batch)
    print(report)
    adtn.finetune(model, train_loader, val_loader, epochs=3, teacher=original)

Policies (per ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layer not skipped):

- a template name: that template everywhere;
- ``"hybrid"``: HT for linear layers, TT for conv layers (Wu et al. 2020, arXiv 2006.15938);
- ``"mixed"``: Tucker-2 or CP at the same budget, whichever gives the lower output error on
  the calibration batch (the lower weight error without one; MTD, Liang and Lee, IPDPSW 2021);
- ``"auto"``: every template that fits the layer (``candidates=``; default all registered but
  ``adtn`` and ``semi_*``, and always ``cp``, which on a weight matrix is exactly the truncated
  SVD), each at the layer's share of the budget; the lowest error is kept;
- a dict from layer name (or glob pattern; first match wins) to a template name, one of the
  policy names above, an options dict ``{"template": ..., **options}`` (``"template"`` may be
  a list of candidates), or None (left dense); layers that match no key stay dense;
- a callable ``f(name)`` or ``f(name, module)`` returning any such value.

Budget allocation: ``budget`` is the parameter fraction of the compressed layers' weights
(biases stay dense; layers whose options give a size count with what they take). Each layer
gets the same fraction of its own weight (a layer whose smallest size is above that share
takes its smallest size, and the others share what is left); each layer takes the largest
size (uniform rank, or depth) within its share, then the layers furthest below their share
grow one size step at a time while the total stays within budget (one last step may overshoot
by up to 10%; no layer grows past ``1 - min_gain`` of its weight). A layer whose network still
saves less than ``min_gain`` (10%) of its weight stays dense, listed in ``report.skipped``,
and the others share the budget again. ``mixed`` / ``auto`` compare their candidates at the share, then once more at
the parameters the allocation gave the layer. The achieved total is within 10% of ``budget``
times the dense parameters: a ``RankError`` names the layers that cannot get that small, and a
warning says when the sizes' steps are too coarse to land within 10%. That is
``allocation="uniform"``, the default. With calibration, ``allocation="global"`` starts every
layer at its smallest size and the greedy knapsack of ``adtn.calibration.allocation`` grows,
one size step at a time, the layer whose whitened spectrum says its output error falls most
per added parameter, while the total stays within the budget (one last step may pass it by
up to 10% when that lands closer); the report's footer lists each layer's share. It is not
the default: the whitened SVD spectrum is a proxy for the other formats, and on the trained
LeNet-5 / CNN of ``benchmarks/calibration.py`` it helped some policies and hurt others.

Calibration (``adtn.calibration``): one pass of the data through the model collects each
layer's input covariance with forward hooks; every layer's initialiser then minimises its
output error on the data, and ``sequential=True`` collects each layer's covariance again on
the model whose earlier layers are already compressed.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .api import OversizeWarning, encode, is_lazy
from .budget import knob_for_budget
from .calibration.allocation import ALLOCATIONS, Proxy, grow
from .calibration.collect import Collected, call, collect, reiterable
from .errors import AdtnError, RankError, TemplateError
from .options import resolve, template_params
from .report import LayerRow, Report, layer_flops
from .templates import get, names, policy_members
from .train import eval_mode

__all__ = ["POLICIES", "compress", "default_candidates"]

POLICIES = ("hybrid", "mixed", "auto")
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
LAYER_KEYS = ("init", "forward", "fit_options", "shape")  # encode options that are not the template's
SIZE_KEYS = ("rank", "depth", "budget", "tol")
TOLERANCE = 0.1
MIN_GAIN = 0.1  # a layer whose network saves less than this share of its parameters stays dense


def default_candidates(kind: str) -> list[str]:
    """The templates ``auto`` tries on a ``kind`` ("linear" / "conv") layer: the formats that join
    the ``auto`` policy there (``Format.policies``; all built-in ones that fit but ``adtn``,
    whose fitting is slow, and ``semi_*``)."""
    return policy_members("auto", kind)


# ---------------------------------------------------------------------- one layer's sizes
@dataclass
class _Ladder:
    """A template's sizes on one layer: its size option (``knob``) and the parameter count of each value."""

    template: str
    knob: str
    axes: dict[str, int]
    kwargs: dict[str, Any]
    dense: int
    step: int = 1
    counts: dict[int, int | None] = field(default_factory=dict)

    def count(self, v: int) -> int | None:
        if v not in self.counts:
            try:
                self.counts[v] = get(self.template).formula(self.axes, **self.kwargs, **{self.knob: v})
            except AdtnError:
                self.counts[v] = None
        return self.counts[v]

    def within(self, target: float) -> int | None:
        """The largest value whose count is at most ``target``; None when even the smallest is above."""
        t = get(self.template)
        try:
            return knob_for_budget("compress", t, self.axes, self.knob, self.kwargs, target / self.dense, self.dense)
        except RankError:
            return None

    def up(self, v: int) -> int | None:
        """The next value with more parameters (at most the dense count), or None."""
        now = self.count(v)
        for k in range(1, 257):
            c = self.count(v + k * self.step)
            if c is None or c > self.dense:
                return None
            if c > now:
                return v + k * self.step
        return None


def _ladder(where: str, module: nn.Module, template: str, opts: Mapping[str, Any]) -> _Ladder:
    from .layers import TNConv1d, TNConv2d, TNLinear

    t = get(template)
    knob = t.knob
    if knob is None or t.formula is None:
        raise TemplateError(f"{where}: a budget needs template {t.name!r} to have a size option and a parameter "
                            "formula; give this layer its options (rank=...) in a dict policy")
    cls = TNLinear if isinstance(module, nn.Linear) else TNConv2d if isinstance(module, nn.Conv2d) else TNConv1d
    weight = module.weight
    axes = dict(zip(["out", "in", *(["kh", "kw"] if weight.dim() == 4 else ["kw"] if weight.dim() == 3 else [])],
                    weight.shape))
    template_opts = {k: v for k, v in opts.items() if k not in LAYER_KEYS + ("modes",)}
    spec = resolve(where, template, axes, cls.kind, modes=opts.get("modes"), options=template_opts,
                   nouns=cls.nouns, **{knob: 1})
    kwargs = {k: v for k, v in spec.kwargs.items() if k != knob}
    if t.clip:
        kwargs.setdefault("clip", True)
    ladder = _Ladder(template, knob, spec.axes, kwargs, weight.numel())
    ladder.step = next((r for r in range(1, 65) if ladder.count(r) is not None), 0)
    if not ladder.step:
        why = {}
        for v in (1, 2, 3):
            try:
                t.formula(ladder.axes, **kwargs, **{knob: v})
            except AdtnError as err:
                why.setdefault(str(err), v)
        why = "".join(f"; at {knob}={v}: {msg}" for msg, v in list(why.items())[:2])
        raise RankError(f"{where}: template {template!r} has no valid size on this layer ({knob}=1..64 all "
                        f"fail{why})")
    return ladder


# ---------------------------------------------------------------------- jobs
@dataclass
class _Job:
    name: str
    module: nn.Module
    candidates: list[str]
    opts: dict[str, Any]
    fixed: bool  # the options give the size
    chosen: str = ""
    ladders: dict[str, _Ladder] = field(default_factory=dict)
    ladder: _Ladder | None = None
    value: int = 0
    tried: dict[str, float] = field(default_factory=dict)
    built: dict[tuple[str, int], nn.Module] = field(default_factory=dict)
    note: str = ""
    calib: Any = None  # the covariance of the layer's calibration inputs (adtn.calibration.Covariance)
    cap: float = 1.0  # the filling grows a layer up to this fraction of its weight (1 - min_gain)

    @property
    def dense(self) -> int:
        return self.module.weight.numel()

    @property
    def params(self) -> int:
        return self.ladder.count(self.value)


def _policy_names() -> str:
    return f"template names {names()}, {', '.join(repr(p) for p in POLICIES)}, or a dict / callable from layer name"


def _candidates(where: str, value: Any, kind: str, candidates: Sequence[str] | None) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in _candidates(where, v, kind, candidates)]
    if not isinstance(value, str):
        raise TemplateError(f"{where}: a policy value must be a template or policy name, an options dict or None, "
                            f"got {value!r}")
    if value == "auto":  # the caller's candidates (or the default pool), plus the formats that always join
        pool = [c for c in (candidates or default_candidates(kind)) if kind in get(c).kinds]
        return pool + [c for c in policy_members("auto_always", kind) if c not in pool]
    if value in POLICIES:  # the formats that declare they join this policy on this kind of layer
        return policy_members(value, kind)
    if value not in names():
        raise TemplateError(f"{where}: unknown policy {value!r}; valid: {_policy_names()}")
    return [value]


def _lookup(policy: Any, name: str, module: nn.Module) -> Any:
    if isinstance(policy, Mapping):
        for key, value in policy.items():
            if name == key or fnmatch.fnmatchcase(name, key):
                return value
        return None
    if callable(policy) and not isinstance(policy, str):
        try:
            n = len([p for p in inspect.signature(policy).parameters.values() if p.default is p.empty])
        except (TypeError, ValueError):
            n = 1
        return policy(name, module) if n >= 2 else policy(name)
    return policy


def _skipped(name: str, module: nn.Module, skip: Sequence[Any]) -> bool:
    for s in skip:
        if isinstance(s, type) and isinstance(module, s):
            return True
        if isinstance(s, str) and (name == s or name.startswith(s + ".") or fnmatch.fnmatchcase(name, s)):
            return True
    return False


def _jobs(model: nn.Module, policy: Any, skip: Sequence[Any], options: dict[str, Any],
          candidates: Sequence[str] | None, budget: float | None) -> tuple[list[_Job], list[tuple[str, str]]]:
    from .layers import TNLayer

    jobs, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and not _skipped(name, module, skip):
            skipped += _attention_weights(name, module)
        if not isinstance(module, SUPPORTED) or isinstance(module, TNLayer):
            continue
        where = f"compress: layer {name or '.'!r} ({type(module).__name__})"
        if _skipped(name, module, skip):
            skipped.append((name, "skip"))
            continue
        if is_lazy(module):
            raise AdtnError(f"{where}: a lazy layer whose weight is not initialised yet; run one forward pass of "
                            "the model first")
        value = _lookup(policy, name, module)
        if value is None:
            skipped.append((name, "the policy leaves it dense"))
            continue
        opts = dict(options)
        if isinstance(value, Mapping):
            opts.update({k: v for k, v in value.items() if k != "template"})
            if "template" not in value:
                raise TemplateError(f"{where}: an options dict needs a 'template' key, got {dict(value)}")
            value = value["template"]
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        if value == "auto":
            opts.setdefault("shape", "auto")
        cands = list(dict.fromkeys(_candidates(where, value, kind, candidates)))
        fixed = any(opts.get(k) is not None for k in SIZE_KEYS)
        if not fixed and budget is None:
            raise RankError(f"{where}: give budget= (a fraction of the parameters) or a size (rank=, depth=, tol=) "
                            "in the options")
        opts.setdefault("init", "auto")
        jobs.append(_Job(name, module, cands, opts, fixed))
    return jobs, skipped


def _attention_weights(name: str, module: nn.MultiheadAttention) -> list[tuple[str, str]]:
    """The skipped entries of an attention layer's q/k/v weights: parameters, not nn.Linear layers."""
    fused = [p for p in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
             if getattr(module, p, None) is not None]
    why = "a q/k/v projection parameter of nn.MultiheadAttention, not an nn.Linear layer (only its out_proj is one)"
    return [(f"{name}.{p}" if name else p, why) for p in fused]


def _encode(module: nn.Module, template: str, **opts: Any) -> nn.Module:
    """``encode`` without its oversize warning: compress keeps such layers dense and reports them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OversizeWarning)
        return encode(module, template, **opts)


def _opts_for(template: str, opts: Mapping[str, Any], several: bool) -> dict[str, Any]:
    """The options given to ``encode``: with several candidates only those the template takes."""
    if not several:
        return dict(opts)
    params = template_params(get(template))
    return {k: v for k, v in opts.items() if k in params or k in LAYER_KEYS or k in SIZE_KEYS}


# ---------------------------------------------------------------------- errors and choice
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny))


@torch.no_grad()
def _errors(job: _Job, layer: nn.Module) -> tuple[float, float | None]:
    """(relative weight error, relative output error on the calibration inputs or None), the
    latter from the inputs' covariance: ``sqrt(tr(E Sigma E^T) / E||W x + b||^2)``, no data pass."""
    with eval_mode(layer, job.module):
        werr = _rel(layer.weight, job.module.weight)
        cerr = None if job.calib is None else job.calib.output_error(job.module.weight, layer.weight, job.module.bias)
    return werr, cerr


def _build(job: _Job, template: str, value: int | None) -> nn.Module:
    key = (template, value)
    if key not in job.built:
        opts = _opts_for(template, job.opts, len(job.candidates) > 1)
        where = f"compress: layer {job.name!r}"
        searched = _searched(job, template, value, opts)
        if searched is not None:
            job.built[key] = searched
            return searched
        opts.pop("shape", None)
        if job.calib is not None:
            opts["calibration"] = job.calib
        if value is not None:
            opts[get(template).knob] = value
            if get(template).clip:
                opts.setdefault("clip", True)
        try:
            job.built[key] = _encode(job.module, template, **opts)
        except AdtnError as err:
            raise type(err)(f"{where}: {err}") from None
    return job.built[key]


def _searched(job: _Job, template: str, value: int | None, opts: dict[str, Any]) -> nn.Module | None:
    """With ``shape="auto"`` (the ``auto`` policy's default), a searchable template's layer at the
    parameters ``value`` gives the default shape, in the shape with the lowest error there
    (``adtn.shapes.search``, ranked by output error on the calibration input when there is one);
    None when the shape is forced or the search finds no shape within those parameters."""
    fmt = get(template)
    if opts.get("shape") != "auto" or value is None or not fmt.searchable or fmt.forced(opts):
        return None
    ladder = job.ladders.get(template)
    count = ladder.count(value) if ladder is not None else None
    if not count:
        return None
    opts = {k: v for k, v in opts.items() if k not in SIZE_KEYS} | {"budget": count / job.dense}
    if job.calib is not None:
        opts["calibration"] = job.calib
    try:
        return _encode(job.module, template, **opts)
    except AdtnError:
        return None


def _prepare(job: _Job) -> None:
    """Each candidate's sizes on the job's layer (``job.ladders``); candidates that cannot be sized are dropped."""
    where = f"compress: layer {job.name!r} ({type(job.module).__name__})"
    reasons: dict[str, AdtnError] = {}
    for t in job.candidates:
        try:
            job.ladders[t] = _ladder(where, job.module, t, _opts_for(t, job.opts, len(job.candidates) > 1))
        except AdtnError as err:
            reasons[t] = err
    if len(reasons) == 1 and not job.ladders:
        raise next(iter(reasons.values()))
    if not job.ladders:
        raise TemplateError(f"{where}: no candidate template can be sized here: "
                            + "; ".join(f"{t}: {e}" for t, e in reasons.items()))


def _choose(job: _Job, share: float | None) -> None:
    """Pick the job's template: the only candidate, or the lowest error at ``share`` of its weight
    (sized by the options when the job is fixed). Candidates that do not fit the share are
    tried only when none does (at their smallest size)."""
    where = f"compress: layer {job.name!r} ({type(job.module).__name__})"
    if job.fixed:
        pool: dict[str, tuple[_Ladder | None, int | None]] = {t: (None, None) for t in job.candidates}
    else:
        sized = {t: (lad, lad.within(share * job.dense)) for t, lad in job.ladders.items()}
        pool = {t: lv for t, lv in sized.items() if lv[1] is not None}
        pool = pool or {t: (lad, lad.step) for t, (lad, _) in sized.items()}
    if len(pool) == 1:
        job.chosen, (job.ladder, _) = next(iter(pool.items()))
        return
    reasons = {}
    for t, (ladder, value) in pool.items():
        job.ladder = ladder
        try:
            werr, cerr = _errors(job, _build(job, t, value))
        except AdtnError as err:
            reasons[t] = str(err)
            continue
        job.tried[t] = cerr if cerr is not None else werr
    if not job.tried:
        raise TemplateError(f"{where}: every candidate template failed: {reasons}")
    job.chosen = min(job.tried, key=job.tried.get)
    job.ladder = pool[job.chosen][0]


# ---------------------------------------------------------------------- budget allocation
def _shares(jobs: list[_Job], target: float, floor: Mapping[int, int]) -> tuple[float, set[int]]:
    """(the fraction each layer gets, the ids of layers whose smallest size ``floor`` is above it)."""
    tight: set[int] = set()
    while True:  # layers whose smallest size is above their share take it; the rest share what is left
        rest = [j for j in jobs if id(j) not in tight]
        left = target - sum(floor[id(j)] for j in jobs if id(j) in tight)
        share = left / sum(j.dense for j in rest) if rest else 0.0
        more = {id(j) for j in rest if share <= 0 or floor[id(j)] > share * j.dense}
        if not more:
            return share, tight
        tight |= more


def _allocate(jobs: list[_Job], target: float, proxies: list | None = None) -> set[int]:
    """Set each flexible job's size so that their parameters total about ``target`` (see the module
    doc); returns the ids of the layers whose smallest size is above their share. With
    ``proxies`` (global allocation) every layer starts at its smallest size and grows where the
    output error falls most per parameter (``adtn.calibration.allocation``)."""
    floor = {id(j): j.ladder.count(j.ladder.step) for j in jobs}
    share, tight = _shares(jobs, target, floor)
    for j in jobs:
        v = None if id(j) in tight or proxies is not None else j.ladder.within(min(share, j.cap) * j.dense)
        j.value = j.ladder.step if v is None else v
    total = sum(j.params for j in jobs)
    if total > target * (1 + TOLERANCE):
        layers = ", ".join(f"{j.name!r} ({j.chosen}: >= {floor[id(j)]:,} of {j.dense:,})" for j in jobs
                           if id(j) in tight)
        raise RankError(f"compress: the budget ({target:,.0f} parameters) is below what the layers can get to: the "
                        f"smallest sizes total {total:,}; too big: {layers}; raise budget= or skip= those layers")
    if proxies is not None:
        grow(jobs, target, proxies)
        return set()
    _fill(jobs, target)
    return tight


def _fill(jobs: list[_Job], target: float) -> None:
    """Grow the layers furthest below their share one size step at a time while the total stays
    within ``target``; one last step may overshoot it by up to 10%."""
    total = sum(j.params for j in jobs)
    high = target * (1 + TOLERANCE)
    nxt = {id(j): j.ladder.up(j.value) for j in jobs}
    while total < target:
        steps = []
        for j in jobs:
            v = nxt[id(j)]
            if v is not None and j.ladder.count(v) <= j.cap * j.dense:
                new = total - j.params + j.ladder.count(v)
                if new <= high:
                    steps.append((new, j.params / j.dense, j, v))
        if not steps:
            return
        under = [s for s in steps if s[0] <= target]
        new, _, j, v = min(under, key=lambda s: s[1]) if under else min(steps, key=lambda s: abs(s[0] - target))
        j.value, total = v, new
        nxt[id(j)] = j.ladder.up(v)
        if not under:
            return


def _budgeted(jobs: list[_Job], target: float, allocation: str = "uniform") -> None:
    """Choose the templates of the layers without given sizes and size them to share ``target``.

    Candidates are first compared at each layer's share of the budget; after allocation, a layer
    with several candidates compares them again at the parameters it was given (the chosen
    template's own size is among them, so its error can only fall), then the sizes are refilled.
    ``allocation="global"`` sizes the layers by their whitened spectra (needs every layer's
    calibration covariance) instead of giving each the same fraction.
    """
    for j in jobs:
        if not j.ladders:
            _prepare(j)
    floor = {id(j): min(lad.count(lad.step) for lad in j.ladders.values()) for j in jobs}
    share, _ = _shares(jobs, target, floor)
    for j in jobs:
        _choose(j, share)
    proxies = [Proxy(j.module.weight, j.calib) for j in jobs] if allocation == "global" else None
    tight = _allocate(jobs, target, proxies)
    several = [j for j in jobs if len(j.ladders) > 1]
    for j in several:
        given = j.params
        j.tried = {}
        _choose(j, given / j.dense)
        j.value = j.ladder.within(given) or j.ladder.step
    if several:
        grow(jobs, target, proxies) if proxies is not None else _fill(jobs, target)
    for j in jobs:
        if id(j) in tight and j.value == j.ladder.step:
            j.note = (f"its smallest {j.chosen!r} size ({j.params:,} parameters, {j.params / j.dense:.1%}) is above "
                      "its share of the budget")


# ---------------------------------------------------------------------- calibration
@torch.no_grad()
def _model_error(model: nn.Module, batch: Any, ref: Any) -> float | None:
    if not isinstance(ref, torch.Tensor):
        return None
    with eval_mode(model):
        out = call(model, batch)
    return _rel(out, ref) if isinstance(out, torch.Tensor) else None


def _forward_order(jobs: list[_Job], order: list[str]) -> list[_Job]:
    """The jobs in the order their layers first ran (those that never ran last, in model order)."""
    rank = {name: k for k, name in enumerate(order)}
    return sorted(jobs, key=lambda j: rank.get(j.name, len(rank)))


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


# ---------------------------------------------------------------------- compress
def compress(
    model: nn.Module,
    policy: str | Mapping[str, Any] | Callable[..., Any] = "hybrid",
    *,
    budget: float | None = None,
    skip: Sequence[str | type] = (),
    calibration: Any = None,
    sequential: bool = False,
    allocation: str | None = None,
    inplace: bool = False,
    candidates: Sequence[str] | None = None,
    min_gain: float = MIN_GAIN,
    **template_options: Any,
) -> tuple[nn.Module, Report]:
    """Replace a model's Linear / Conv1d / Conv2d layers by TN layers initialised from their weights.

    Args:
        model: any ``nn.Module`` (or a single layer).
        policy: a template name, ``"hybrid"``, ``"mixed"``, ``"auto"``, a dict or a callable
            (see the module doc).
        budget: the parameter fraction of the compressed layers' weights, in (0, 1], allocated
            across layers as the module doc says and met within 10%. None: every layer's size
            comes from the options (``rank=``, ``depth=``, ``tol=``).
        skip: layer names (a name skips its submodules too; glob patterns allowed) or module
            types left dense; a name that matches no layer is an error.
        calibration: an input batch: a tensor (``model(x)``), a tuple / list whose first item is
            the input (a loader's ``(x, y)``), or a dict of keyword inputs; or an iterable of
            such batches (a DataLoader, or a list of dicts / tuples). One pass collects each layer's input covariance
            ``Sigma = E[x x^T]`` (bounded memory): every initialiser then minimises the layer's
            output error on the data instead of its weight error (``adtn.calibration``), and it
            gives each layer's output error, the model's (on the first batch), conv FLOPs at the
            real input size, and the ``mixed`` / ``auto`` choices (weight error without it).
        sequential: collect each layer's covariance on the model whose earlier layers are
            already compressed (layer by layer in forward order, one pass each, as SVD-LLM and
            GPTQ do), so a layer corrects the error upstream; sizes and templates are chosen on
            the first pass.
        allocation: ``"uniform"`` (default): every layer the same fraction (the module doc);
            ``"global"`` (needs calibration): layers get different fractions, by a greedy
            knapsack on their whitened spectra (``adtn.calibration.allocation``).
        inplace: change ``model`` itself; False (default) leaves it untouched and works on a copy.
        candidates: the templates ``auto`` tries (default ``default_candidates(kind)``).
        min_gain: a layer whose network would save less than this share of its weight's
            parameters (default 0.1) stays dense; the report lists it under ``skipped``.
        **template_options: given to every ``adtn.encode`` call (``init=``, ``forward=``,
            ``modes=``, ``d=``, ``rank=``, ...); ``init`` defaults to ``"auto"``.

    Returns:
        ``(model, report)``: the compressed model (in the original's training mode) and a ``Report``.
    """
    if not isinstance(model, nn.Module):
        raise AdtnError(f"compress: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(policy, str) and policy not in POLICIES and policy not in names():
        raise TemplateError(f"compress: unknown policy {policy!r}; valid: {_policy_names()}")
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0 <= min_gain < 1:
        raise AdtnError(f"compress: min_gain is the share of a layer's parameters its network must save, in "
                        f"[0, 1), got {min_gain!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget <= 1):
        raise RankError(f"compress: budget is the fraction of the compressed layers' parameters, in (0, 1], "
                        f"got {budget!r}")
    sizes = [k for k in SIZE_KEYS if template_options.get(k) is not None]
    if budget is not None and sizes:
        raise RankError(f"compress: give budget= or a size for every layer ({', '.join(sizes)}=), not both")
    allocation = "uniform" if allocation is None else allocation
    if allocation not in ALLOCATIONS:
        raise AdtnError(f"compress: allocation must be one of {list(ALLOCATIONS)}, got {allocation!r}")
    if allocation == "global" and calibration is None:
        raise AdtnError("compress: allocation='global' needs calibration= (it sizes layers by their output error)")
    if sequential and calibration is None:
        raise AdtnError("compress: sequential=True needs calibration= (the inputs each compressed layer sees)")
    if sequential and not reiterable(calibration):
        raise AdtnError(f"compress: sequential=True passes over the calibration data once per layer; got a one-shot "
                        f"{type(calibration).__name__}: pass a DataLoader or a batch")
    skip = (skip,) if isinstance(skip, (str, type)) else tuple(skip)
    all_names = [n for n, _ in model.named_modules()]
    for s in skip:
        if isinstance(s, str) and not any(n == s or n.startswith(s + ".") or fnmatch.fnmatchcase(n, s)
                                          for n in all_names):
            raise AdtnError(f"compress: skip={s!r} matches no module of {type(model).__name__}; "
                            f"modules: {[n for n in all_names if n][:20]}")
        if not isinstance(s, (str, type)):
            raise AdtnError(f"compress: skip takes module names or types, got {s!r}")
    work = model if inplace else copy.deepcopy(model)
    jobs, skipped = _jobs(work, policy, skip, template_options, candidates, budget)
    if not jobs:
        left = f"; left dense: {skipped}" if skipped else ""
        raise AdtnError(f"compress: no nn.Linear/nn.Conv1d/nn.Conv2d layers left to compress in "
                        f"{type(model).__name__}(...) after skip={skip!r}{left}")
    found = collect(work, {j.name: j.module for j in jobs}, calibration) if calibration is not None else Collected()
    for j in jobs:
        j.calib, j.cap = found.covariances.get(j.name), 1 - min_gain
    if allocation == "global" and any(j.calib is None for j in jobs if not j.fixed):
        missed = [j.name for j in jobs if j.calib is None and not j.fixed]
        warnings.warn(f"compress: layers {missed} never ran on the calibration data: allocation='uniform'",
                      stacklevel=2)
        allocation = "uniform"
    jobs = _sizable(jobs, skipped)
    if not jobs:
        raise AdtnError(f"compress: no layer of {type(model).__name__}(...) can take the policy's networks; "
                        f"left dense: {skipped}")
    aliases: dict[int, list[str]] = {}
    for name, module in work.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)

    while jobs:  # layers whose network gains too little stay dense; the others share the budget again
        flexible = _size(jobs, budget, allocation)
        small = [j for j in jobs if _build(j, j.chosen, None if j.fixed else j.value).num_tn_params
                 > (1 - min_gain) * j.dense]
        if not small:
            break
        for j in small:
            n = _build(j, j.chosen, None if j.fixed else j.value).num_tn_params
            gain = "more than the dense weight" if n > j.dense else f"a gain under {min_gain:.0%}"
            why = (f"its {j.chosen!r} network would take {n:,} of the weight's {j.dense:,} parameters "
                   f"({n / j.dense:.0%}), {gain}")
            skipped.append((j.name or ".", why))
        jobs = [j for j in jobs if all(j is not k for k in small)]

    report = Report(policy=_policy_text(policy), budget=budget,
                    model_params_before=sum(p.numel() for p in model.parameters()),
                    flops_unit="per sample" if found.covariances else "per output position (conv) / row (linear)",
                    allocation=allocation if flexible else "")
    rows = {}
    for j in _forward_order(jobs, found.order) if sequential else jobs:
        if sequential:  # this layer's inputs on the model compressed so far
            again = collect(work, {j.name: j.module}, calibration, keep_output=False).covariances.get(j.name)
            if again is not None:
                j.calib, j.built = again, {}
        layer = _build(j, j.chosen, None if j.fixed else j.value)
        layer.train(j.module.training)
        werr, cerr = _errors(j, layer)
        shape = j.calib.input_shape if j.calib is not None else None
        before, _ = layer_flops(j.module, shape)
        after, fwd = layer_flops(layer, shape)
        choice = getattr(layer, "shape_choice", None)
        rows[j.name] = LayerRow(j.name or ".", type(j.module).__name__, j.chosen, dict(layer.template_options),
                                j.dense, layer.num_tn_params, before, after, fwd, werr, cerr, dict(j.tried),
                                j.note, "" if choice is None else choice.summary())
        for name in aliases.get(id(j.module), [j.name]):  # a module used at several places stays shared
            work = _replace(work, name, layer)
    report.rows = [rows[j.name] for j in jobs]
    report.skipped = skipped
    report.model_params_after = sum(p.numel() for p in work.parameters())
    if calibration is not None:
        report.model_error = _model_error(work, found.first, found.output)
    if budget is not None and jobs and flexible and abs(report.fraction - budget) > TOLERANCE * budget:
        warnings.warn(f"compress: achieved {report.fraction:.4f} of the parameters, more than 10% from budget="
                      f"{budget} (the layers' sizes ran out); see the report", stacklevel=2)
    return work, report


def _sizable(jobs: list[_Job], skipped: list[tuple[str, str]]) -> list[_Job]:
    """The jobs whose candidates can be sized; a layer no candidate fits (a 1-channel conv under a
    semi-tensor format) stays dense and is listed in ``skipped`` with the reason, as a user of a
    whole-model policy expects, instead of failing the whole model."""
    kept = []
    for j in jobs:
        if not j.fixed:
            try:
                _prepare(j)
            except AdtnError as err:
                skipped.append((j.name or ".", f"no network of the policy fits it: {err}"))
                continue
        kept.append(j)
    return kept


def _size(jobs: list[_Job], budget: float | None, allocation: str) -> list[_Job]:
    """Choose and size every job: given sizes first, then the budget's rest shared by the others
    (returned)."""
    flexible = [j for j in jobs if not j.fixed]
    for j in jobs:
        if j.fixed and not j.chosen:
            _choose(j, None)
    fixed_params = sum(_build(j, j.chosen, None).num_tn_params for j in jobs if j.fixed)
    if flexible:
        target = budget * sum(j.dense for j in jobs) - fixed_params
        if target <= 0:
            raise RankError(f"compress: the layers with sizes given already take {fixed_params:,} parameters, more "
                            f"than the budget {budget} allows ({budget * sum(j.dense for j in jobs):,.0f})")
        _budgeted(flexible, target, allocation)
    return flexible


def _policy_text(policy: Any) -> str:
    if isinstance(policy, str):
        return policy
    if isinstance(policy, Mapping):
        return "dict(" + ", ".join(f"{k}={v!r}" for k, v in policy.items()) + ")"
    return getattr(policy, "__name__", type(policy).__name__)

"""``compress``: walk a model, size and choose every selected layer's network, replace the layers, report."""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..calibration.allocation import ALLOCATIONS
from ..calibration.collect import Collected, call, collect, reiterable
from ..errors import AdtnError, RankError, TemplateError
from ..report import LayerRow, Report, layer_flops
from ..templates import check_options, names, policy_members
from ..train import eval_mode
from .allocate import budgeted
from .choice import build, choose, errors, prepare, rel_error
from .policy import POLICIES, make_jobs, policy_names, policy_text
from .sizes import LAYER_KEYS, MIN_GAIN, SIZE_KEYS, TOLERANCE, Job

__all__ = ["compress"]


def float_leaves(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output, in order: the tensor itself, or those inside
    a tuple / list / dict (a transformers ``ModelOutput`` is a dict)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in float_leaves(item)]
    return []


@torch.no_grad()
def model_error(model: nn.Module, batch: Any, ref: Any) -> float | None:
    """Relative error of the model's output against ``ref`` over all its floating tensors (None when
    the output holds none, or its structure changed)."""
    want = float_leaves(ref)
    if not want:
        return None
    with eval_mode(model):
        got = float_leaves(call(model, batch))
    if [t.shape for t in got] != [t.shape for t in want]:
        return None
    return rel_error(torch.cat([t.flatten() for t in got]), torch.cat([t.flatten() for t in want]))


def forward_order(jobs: list[Job], order: list[str]) -> list[Job]:
    """The jobs in the order their layers first ran (those that never ran last, in model order)."""
    rank = {name: k for k, name in enumerate(order)}
    return sorted(jobs, key=lambda j: rank.get(j.name, len(rank)))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def _option_templates(policy: Any, candidates: Sequence[str] | None) -> list[str]:
    """The formats whose build options ``compress``'s own options may name: the policy's (a template
    name, a policy's members, ``auto``'s candidates); every registered one for a dict or callable."""
    if isinstance(policy, str) and policy in names():
        return [policy]
    if policy == "auto" and candidates:
        return [c for c in candidates if c in names()] or names()
    if isinstance(policy, str):
        return sorted({m for kind in ("linear", "conv") for m in policy_members(policy, kind)}) or names()
    return names()


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
        raise TemplateError(f"compress: unknown policy {policy!r}; valid: {policy_names()}")
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0 <= min_gain < 1:
        raise AdtnError(f"compress: min_gain is the share of a layer's parameters its network must save, in "
                        f"[0, 1), got {min_gain!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget <= 1):
        raise RankError(f"compress: budget is the fraction of the compressed layers' parameters, in (0, 1], "
                        f"got {budget!r}")
    check_options("compress", _option_templates(policy, candidates), template_options,
                  (*LAYER_KEYS, *SIZE_KEYS, "modes"))
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
    jobs, skipped = make_jobs(work, policy, skip, template_options, candidates, budget)
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
    jobs = sizable(jobs, skipped)
    if not jobs:
        raise AdtnError(f"compress: no layer of {type(model).__name__}(...) can take the policy's networks; "
                        f"left dense: {skipped}")
    aliases: dict[int, list[str]] = {}
    for name, module in work.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)

    while jobs:  # layers whose network gains too little stay dense; the others share the budget again
        flexible = size_jobs(jobs, budget, allocation)
        small = [j for j in jobs if build(j, j.chosen, None if j.fixed else j.value).num_tn_params
                 > (1 - min_gain) * j.dense]
        if not small:
            break
        for j in small:
            n = build(j, j.chosen, None if j.fixed else j.value).num_tn_params
            gain = "more than the dense weight" if n > j.dense else f"a gain under {min_gain:.0%}"
            why = (f"its {j.chosen!r} network would take {n:,} of the weight's {j.dense:,} parameters "
                   f"({n / j.dense:.0%}), {gain}")
            skipped.append((j.name or ".", why))
        jobs = [j for j in jobs if all(j is not k for k in small)]

    report = Report(policy=policy_text(policy), budget=budget,
                    model_params_before=sum(p.numel() for p in model.parameters()),
                    flops_unit="per sample" if found.covariances else "per output position (conv) / row (linear)",
                    allocation=allocation if flexible else "")
    rows = {}
    for j in forward_order(jobs, found.order) if sequential else jobs:
        if sequential:  # this layer's inputs on the model compressed so far
            again = collect(work, {j.name: j.module}, calibration, keep_output=False).covariances.get(j.name)
            if again is not None:
                j.calib, j.built = again, {}
        layer = build(j, j.chosen, None if j.fixed else j.value)
        layer.train(j.module.training)
        werr, cerr = errors(j, layer)
        shape = j.calib.input_shape if j.calib is not None else None
        before, _ = layer_flops(j.module, shape)
        after, fwd = layer_flops(layer, shape)
        choice = getattr(layer, "shape_choice", None)
        rows[j.name] = LayerRow(j.name or ".", type(j.module).__name__, j.chosen, dict(layer.template_options),
                                j.dense, layer.num_tn_params, before, after, fwd, werr, cerr, dict(j.tried),
                                j.note, "" if choice is None else choice.summary())
        for name in aliases.get(id(j.module), [j.name]):  # a module used at several places stays shared
            work = replace_module(work, name, layer)
    report.rows = [rows[j.name] for j in jobs]
    report.skipped = skipped
    report.model_params_after = sum(p.numel() for p in work.parameters())
    if calibration is not None:
        report.model_error = model_error(work, found.first, found.output)
    if budget is not None and jobs and flexible and abs(report.fraction - budget) > TOLERANCE * budget:
        warnings.warn(f"compress: achieved {report.fraction:.4f} of the parameters, more than 10% from budget="
                      f"{budget} (the layers' sizes ran out); see the report", stacklevel=2)
    return work, report


def sizable(jobs: list[Job], skipped: list[tuple[str, str]]) -> list[Job]:
    """The jobs whose candidates can be sized; a layer no candidate fits (a 1-channel conv under a
    semi-tensor format) stays dense and is listed in ``skipped`` with the reason, as a user of a
    whole-model policy expects, instead of failing the whole model."""
    kept = []
    for j in jobs:
        if not j.fixed:
            try:
                prepare(j)
            except AdtnError as err:
                skipped.append((j.name or ".", f"no network of the policy fits it: {err}"))
                continue
        kept.append(j)
    return kept


def size_jobs(jobs: list[Job], budget: float | None, allocation: str) -> list[Job]:
    """Choose and size every job: given sizes first, then the budget's rest shared by the others
    (returned)."""
    flexible = [j for j in jobs if not j.fixed]
    for j in jobs:
        if j.fixed and not j.chosen:
            choose(j, None)
    fixed_params = sum(build(j, j.chosen, None).num_tn_params for j in jobs if j.fixed)
    if flexible:
        target = budget * sum(j.dense for j in jobs) - fixed_params
        if target <= 0:
            raise RankError(f"compress: the layers with sizes given already take {fixed_params:,} parameters, more "
                            f"than the budget {budget} allows ({budget * sum(j.dense for j in jobs):,.0f})")
        budgeted(flexible, target, allocation)
    return flexible

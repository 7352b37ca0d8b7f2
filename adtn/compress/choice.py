"""Building a layer's network at a size, its errors, and the choice among a layer's candidate formats."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..api import OversizeWarning, encode
from ..calibration.init import refinement
from ..errors import AdtnError, TemplateError
from ..options import template_params
from ..templates import get
from ..train import eval_mode
from .sizes import LAYER_KEYS, SIZE_KEYS, Job, Ladder, make_ladder

COMPARE_STEPS = 10  # refinement iterations of each candidate format while the auto policy compares them

__all__ = ["build", "choose", "encode_quietly", "errors", "opts_for", "prepare", "rel_error", "searched_layer"]


def encode_quietly(module: nn.Module, template: str, **opts: Any) -> nn.Module:
    """``encode`` without its oversize warning: compress keeps such layers dense and reports them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OversizeWarning)
        return encode(module, template, **opts)


def opts_for(template: str, opts: Mapping[str, Any], several: bool) -> dict[str, Any]:
    """The options given to ``encode``: with several candidates only those the template takes."""
    if not several:
        return dict(opts)
    params = template_params(get(template))
    return {k: v for k, v in opts.items() if k in params or k in LAYER_KEYS or k in SIZE_KEYS}


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny))


@torch.no_grad()
def errors(job: Job, layer: nn.Module) -> tuple[float, float | None]:
    """(relative weight error, relative output error on the calibration inputs or None), the
    latter from the inputs' covariance: ``sqrt(tr(E Sigma E^T) / E||W x + b||^2)``, no data pass."""
    with eval_mode(layer, job.module):
        werr = rel_error(layer.weight, job.module.weight)
        cerr = None if job.calib is None else job.calib.output_error(job.module.weight, layer.weight, job.module.bias)
    return werr, cerr


def build(job: Job, template: str, value: int | None) -> nn.Module:
    key = (template, value)
    if key not in job.built:
        opts = opts_for(template, job.opts, len(job.candidates) > 1)
        where = f"compress: layer {job.name!r}"
        searched = searched_layer(job, template, value, opts)
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
            job.built[key] = encode_quietly(job.module, template, **opts)
        except AdtnError as err:
            raise type(err)(f"{where}: {err}") from None
    return job.built[key]


def searched_layer(job: Job, template: str, value: int | None, opts: dict[str, Any]) -> nn.Module | None:
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
        return encode_quietly(job.module, template, **opts)
    except AdtnError:
        return None


def prepare(job: Job) -> None:
    """Each candidate's sizes on the job's layer (``job.ladders``); candidates that cannot be sized are dropped."""
    where = f"compress: layer {job.name!r} ({type(job.module).__name__})"
    reasons: dict[str, AdtnError] = {}
    for t in job.candidates:
        try:
            job.ladders[t] = make_ladder(where, job.module, t, opts_for(t, job.opts, len(job.candidates) > 1))
        except AdtnError as err:
            reasons[t] = err
    if len(reasons) == 1 and not job.ladders:
        raise next(iter(reasons.values()))
    if not job.ladders:
        raise TemplateError(f"{where}: no candidate template can be sized here: "
                            + "; ".join(f"{t}: {e}" for t, e in reasons.items()))


def choose(job: Job, share: float | None) -> None:
    """Pick the job's template: the only candidate, or the lowest error at ``share`` of its weight
    (sized by the options when the job is fixed). Candidates that do not fit the share are
    tried only when none does (at their smallest size)."""
    where = f"compress: layer {job.name!r} ({type(job.module).__name__})"
    if job.fixed:
        pool: dict[str, tuple[Ladder | None, int | None]] = {t: (None, None) for t in job.candidates}
    else:
        sized = {t: (lad, lad.within(share * job.dense)) for t, lad in job.ladders.items()}
        pool = {t: lv for t, lv in sized.items() if lv[1] is not None}
        pool = pool or {t: (lad, lad.step) for t, (lad, _) in sized.items()}
    if len(pool) == 1:
        job.chosen, (job.ladder, _) = next(iter(pool.items()))
        return
    reasons = {}
    with refinement(COMPARE_STEPS):  # formats are compared after a short refinement; the chosen one gets the full one
        for t, (ladder, value) in pool.items():
            job.ladder = ladder
            try:
                werr, cerr = errors(job, build(job, t, value))
            except AdtnError as err:
                reasons[t] = str(err)
                continue
            job.tried[t] = cerr if cerr is not None else werr
    if job.calib is not None:
        job.built.clear()  # built without refinement: the chosen format's layer is built again, refined
    if not job.tried:
        raise TemplateError(f"{where}: every candidate template failed: {reasons}")
    job.chosen = min(job.tried, key=job.tried.get)
    job.ladder = pool[job.chosen][0]

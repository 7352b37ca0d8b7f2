"""Fit any compiled network to a dense tensor by gradient descent.

The fallback initialiser for formats without a closed-form one (deep ADTN, users' own
graphs): minimise the relative Frobenius error of ``module.dense()`` against the target
with Adam, optionally polish with L-BFGS, and stop early once a target error is reached or
the error has stopped falling (a deep network far from the target, e.g. ADTN at 1% of a random
weight, would otherwise spend all its steps within a fraction of a percent of its plateau).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import AdtnError, ShapeError

__all__ = ["FitResult", "fit", "initialize"]


@dataclass
class FitResult:
    """What ``fit`` reached: the final relative error, steps taken, and the error history."""

    rel_error: float
    steps: int
    history: list[float] = field(repr=False, default_factory=list)
    converged: bool = False
    stop: str = "steps"  # why Adam stopped: "target", "plateau" or "steps"


def _check_target(module: nn.Module, dense: torch.Tensor) -> torch.Tensor:
    if not isinstance(dense, torch.Tensor):
        dense = torch.as_tensor(dense)
    with torch.no_grad():
        shape = tuple(module.dense().shape)
    if tuple(dense.shape) != shape:
        raise ShapeError(f"fit: target of shape {tuple(dense.shape)} does not match the network's dense shape {shape}")
    if not torch.isfinite(dense).all():
        raise ShapeError("fit: target tensor contains NaN or inf")
    return dense


def fit(
    module: nn.Module,
    dense: torch.Tensor,
    steps: int = 2000,
    lr: float = 1e-2,
    target: float = 1e-4,
    lbfgs_steps: int = 0,
    progress: bool | None = False,
    log_every: int = 50,
    patience: int | None = 200,
    min_improvement: float = 1e-3,
    metric: torch.Tensor | None = None,
) -> FitResult:
    """Fit ``module`` (anything with ``dense()`` and parameters) to ``dense`` in place.

    Args:
        module: a TNModule, a DeepTN module, or any module with a ``dense()`` method.
        dense: the target tensor, of ``module.dense()``'s shape.
        steps: Adam steps at most.
        lr: Adam learning rate (decayed by cosine annealing).
        target: stop once the relative Frobenius error is at most this.
        lbfgs_steps: L-BFGS iterations after Adam (0 to skip), useful to polish a fit.
        progress: show a tqdm progress bar: True, False, or None for a bar only when stderr is a
            terminal (tqdm's ``disable=None``; nothing when tqdm is not installed).
        log_every: record the error in ``history`` every this many steps.
        patience: stop Adam when the best error of the last ``patience`` steps is less than
            ``min_improvement`` (relative) below the best before them; None never stops early.
        min_improvement: see ``patience``.
        metric: (groups, n, n) factors ``L`` of the inputs' second moment (``adtn.calibration``):
            the error is then ``||(W_hat - W) L||`` over ``||W L||``, the relative output error on
            calibration inputs, with ``W`` as (groups, out / groups, n).
    """
    if not hasattr(module, "dense"):
        raise AdtnError(f"fit: {type(module).__name__} has no dense() method; pass a compiled network")
    if steps < 0 or lbfgs_steps < 0 or lr <= 0 or target < 0:
        raise AdtnError(f"fit: steps and lbfgs_steps must be >= 0, lr > 0, target >= 0; got {steps}, {lbfgs_steps}, {lr}, {target}")
    if patience is not None and patience < 1 or not 0 <= min_improvement < 1:
        raise AdtnError(f"fit: patience must be None or >= 1 and 0 <= min_improvement < 1; got {patience}, "
                        f"{min_improvement}")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise AdtnError(f"fit: {type(module).__name__} has no trainable parameters")
    dense = _check_target(module, dense).to(dtype=params[0].dtype, device=params[0].device)
    norm = torch.linalg.vector_norm(dense).clamp_min(torch.finfo(dense.dtype).tiny)
    was_training = module.training
    module.train()

    if metric is not None:
        metric = metric.to(dtype=dense.dtype, device=dense.device)
        g, n = metric.shape[0], metric.shape[-1]
        norm = torch.linalg.vector_norm(dense.reshape(g, -1, n) @ metric).clamp_min(torch.finfo(dense.dtype).tiny)

    def loss_fn() -> torch.Tensor:
        if metric is not None:
            return torch.linalg.vector_norm((module.dense() - dense).reshape(g, -1, n) @ metric) / norm
        return torch.linalg.vector_norm(module.dense() - dense) / norm

    history: list[float] = []
    err = float("inf")
    bar: Any = None
    if progress is not False:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            if progress:
                raise AdtnError("fit: progress=True needs tqdm (pip install tqdm); pass progress=None or False") \
                    from None
        else:
            bar = tqdm(total=steps, desc="fit", leave=False, disable=None if progress is None else False)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    step, stop = 0, "steps"
    best, checkpoint = float("inf"), float("inf")  # best error so far, and as it was ``patience`` steps ago
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        err = float(loss.detach())
        best = min(best, err)
        if step % log_every == 0 or step == 1:
            history.append(err)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(rel_error=f"{err:.2e}", refresh=False)
        if err <= target:
            stop = "target"
            break  # before stepping, so the parameters are the ones that reached the target
        if patience is not None and step % patience == 0:
            if best > (1 - min_improvement) * checkpoint:
                stop = "plateau"
                break
            checkpoint = best
        loss.backward()
        opt.step()
        sched.step()
    if bar is not None:
        bar.close()
    if lbfgs_steps and err > target:
        lbfgs = torch.optim.LBFGS(params, max_iter=lbfgs_steps, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

        def closure() -> torch.Tensor:
            lbfgs.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            return loss

        lbfgs.step(closure)
    with torch.no_grad():
        err = float(loss_fn())
    history.append(err)
    module.train(was_training)
    return FitResult(err, step, history, err <= target, stop)


def initialize(module: nn.Module, dense: torch.Tensor, method: str = "auto", **fit_options: Any) -> FitResult | None:
    """Set ``module``'s parameters from a dense tensor, in place.

    ``method="auto"`` uses the exact initialiser of the template that built the module's
    graph when it has one (TT-SVD, HOSVD, Kronecker SVD, ...), else ``fit``;
    ``"decompose"`` insists on the template's initialiser; ``"fit"`` always fits.
    Returns the FitResult when fitting ran, else None.
    """
    from .templates import template_of

    if method not in ("auto", "decompose", "fit"):
        raise AdtnError(f"initialize: method must be 'auto', 'decompose' or 'fit', got {method!r}")
    graph = getattr(module, "graph", None)
    found = template_of(graph) if graph is not None else None
    if method != "fit" and found is not None and found[0].init is not None:
        template, options = found
        dense = _check_target(module, dense)
        axes = dict(graph.meta["template"]["axes"])
        built, tensors = template.init(dense, axes, **options)
        if built.structure_hash() != graph.structure_hash():
            raise AdtnError(
                f"initialize: template {template.name!r} decomposed to a different structure than the module's "
                f"graph ({built} vs {graph}); pass the same options"
            )
        with torch.no_grad():
            for name, tensor in tensors.items():
                module.params[name].copy_(tensor.to(module.params[name]))
        return None
    if method == "decompose":
        name = found[0].name if found else None
        raise AdtnError(
            f"initialize: method='decompose' needs a template with an exact initialiser; this graph's template is "
            f"{name!r}. Use method='fit' (gradient descent) instead"
        )
    return fit(module, dense, **fit_options)

"""One pass of calibration data through a model, accumulating chosen layers' input covariances.

``compress(..., calibration=...)`` takes a batch (a tensor for ``model(x)``, a tuple / list
whose first item is the input, as a loader's ``(x, y)``, or a dict of keyword inputs) or an
iterable of such batches (a DataLoader, or a list whose items are all dicts or tuples: a list
whose first item is a tensor is one ``(x, y)`` batch). Forward pre-hooks add each layer's inputs to its
``Accumulator``, so memory stays bounded however many batches there are. A dict batch with an
``attention_mask`` (a tokenizer's output) counts real tokens only: padding positions would
otherwise pull every layer's covariance towards the pad token's states.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import AdtnError, ShapeError
from ..train import eval_mode
from .covariance import DAMPING, Accumulator, Covariance

__all__ = ["Collected", "batches", "call", "collect", "reiterable"]


def _single(calibration: Any) -> bool:
    if isinstance(calibration, list) and calibration and all(isinstance(b, (Mapping, tuple, list)) for b in calibration):
        return False  # a list of batches (dicts of keyword inputs, (x, y) pairs)
    return isinstance(calibration, (Tensor, tuple, list, Mapping))


def batches(calibration: Any) -> Iterator[Any]:
    """The batches of ``calibration``: itself when it is one batch, else its items."""
    if _single(calibration):
        yield calibration
        return
    if not isinstance(calibration, Iterable):
        raise AdtnError(f"compress: calibration must be a tensor batch, an (x, y) tuple, a dict of keyword inputs or "
                        f"an iterable of batches (a DataLoader), got {type(calibration).__name__}")
    yield from calibration


def reiterable(calibration: Any) -> bool:
    """True when ``calibration`` can be passed over more than once (not a generator / iterator)."""
    return _single(calibration) or iter(calibration) is not calibration


def call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _finite(x: Tensor) -> bool:
    """No NaN / inf in ``x``: one float64 sum (NaN and inf propagate; a float64 sum of float32 values
    cannot overflow) instead of ``isfinite(x).all()``, which cost more than the forward passes on a
    transformer's calibration."""
    return bool(torch.isfinite(x.sum(dtype=torch.float64)))


def _attention_mask(batch: Any) -> Tensor | None:
    """A dict batch's ``attention_mask`` (batch, tokens), when it has one."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask if isinstance(mask, Tensor) and mask.dim() == 2 else None


def _shape(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return tuple(batch.shape)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return tuple(batch[0].shape)
    return type(batch).__name__


@dataclass
class Collected:
    """Per layer name its ``Covariance`` (layers the data never reached are absent), the first
    batch and the model's output on it, and the layers in the order they first ran."""

    covariances: dict[str, Covariance] = field(default_factory=dict)
    first: Any = None
    output: Any = None
    order: list[str] = field(default_factory=list)


@torch.no_grad()
def collect(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Any, *, damping: float = DAMPING,
            keep_output: bool = True) -> Collected:
    """Run every batch of ``calibration`` through ``model`` (in eval mode) and accumulate the inputs
    of ``layers`` (name -> module of the model)."""
    accs = {name: Accumulator(m, f"compress: layer {name!r} ({type(m).__name__})") for name, m in layers.items()}
    found = Collected()
    bad: list[str] = []
    errors: dict[str, ShapeError] = {}
    mask: list[Tensor | None] = [None]  # the running batch's attention_mask, if any

    def keep(name: str):
        def hook(module: nn.Module, args: tuple) -> None:  # returns None: the input is left as it is
            x = args[0] if args else None
            if name not in found.order:
                found.order.append(name)
            if isinstance(x, Tensor) and x.is_floating_point() and not _finite(x):
                if name not in bad:
                    bad.append(name)
                return
            try:
                accs[name].add(x, mask[0])
            except ShapeError as err:  # raised after the pass, unless the model itself fails on the batch
                errors.setdefault(name, err)
        return hook

    hooks = [m.register_forward_pre_hook(keep(name)) for name, m in layers.items()]
    try:
        with eval_mode(model):
            for k, batch in enumerate(batches(calibration)):
                mask[0] = _attention_mask(batch)
                try:
                    out = call(model, batch)
                except ShapeError:
                    raise
                except (RuntimeError, TypeError, ValueError) as err:
                    raise ShapeError(f"compress: the calibration batch ({_shape(batch)}) does not run through the "
                                     f"model: {err}") from err
                if k == 0:
                    found.first = batch
                    found.output = out if keep_output else None
    finally:
        for h in hooks:
            h.remove()
    if bad:
        raise ShapeError(f"compress: the calibration batch gives NaN or inf at the input of layer(s) {bad}")
    if errors:
        raise next(iter(errors.values()))
    if found.first is None:
        raise ShapeError("compress: too few calibration samples: the calibration data holds no batch")
    for name, acc in accs.items():
        if acc.input_shape is not None:  # layers the data never reached get no covariance
            found.covariances[name] = acc.result(damping)
    return found

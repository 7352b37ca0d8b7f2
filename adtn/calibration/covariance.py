"""The second moment of a layer's inputs, ``Sigma = E[x x^T]``, collected in one streaming pass.

Data-aware compression minimises ``||(W - W_hat) L||_F`` with ``L L^T = Sigma``: the layer's
output error on its calibration inputs, which needs ``Sigma`` only, never the inputs. A linear
layer's ``x`` is its input's last dimension (any leading dimensions are rows); a conv's is an
unfolded patch (``in/groups * kh * kw``, the weight's row layout), taken after the layer's
``padding_mode`` pads the input, with its stride, dilation and groups (one ``Sigma`` per group).
Sums are float64 and chunked, so a DataLoader of many batches runs in bounded memory.

    cov = adtn.calibration.covariance(layer, x)           # a batch, or an iterable of batches
    cov.output_error(layer.weight, approx, layer.bias)    # relative error of layer(x), no data pass
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AdtnError, ShapeError

__all__ = ["DAMPING", "Accumulator", "Covariance", "Geometry", "covariance", "geometry_of"]

DAMPING = 0.01  # relative to the mean eigenvalue, as GPTQ's percdamp: the whitening's regulariser
CHUNK = 2**22  # float64 entries of patches formed at once


@dataclass(frozen=True)
class Geometry:
    """A conv layer's patch geometry (None stands for a linear layer)."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (left, right) per spatial dim
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str
    in_channels: int

    @property
    def features(self) -> int:
        return self.in_channels // self.groups * math.prod(self.kernel)


def _pairs(padding: Any, kernel: Sequence[int], dilation: Sequence[int], where: str) -> tuple[tuple[int, int], ...]:
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    if padding == "same":  # torch's rule: the extra pixel of an uneven total goes right
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, str):
        raise AdtnError(f"{where}: padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    pads = (padding,) * len(kernel) if isinstance(padding, int) else tuple(padding)
    return tuple((int(p), int(p)) for p in pads)


def geometry_of(layer: Any, where: str = "calibration") -> Geometry | None:
    """The patch geometry of an ``nn.Conv1d`` / ``nn.Conv2d`` (or a dict of their arguments);
    None for a linear layer."""
    if isinstance(layer, nn.Linear):
        return None
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        args = {k: getattr(layer, k) for k in ("kernel_size", "stride", "padding", "dilation", "groups",
                                               "padding_mode", "in_channels")}
    elif isinstance(layer, dict) and "kernel_size" in layer:
        args = layer
    elif isinstance(layer, dict):
        return None
    else:
        raise AdtnError(f"{where}: needs an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(layer).__name__}")
    kernel = args["kernel_size"]
    nd = len(kernel) if isinstance(kernel, Sequence) else (2 if isinstance(layer, nn.Conv2d) else 1)

    def tup(v: Any) -> tuple[int, ...]:
        return (int(v),) * nd if isinstance(v, int) else tuple(int(a) for a in v)

    kernel, dilation = tup(kernel), tup(args.get("dilation", 1))
    return Geometry(kernel, tup(args.get("stride", 1)), _pairs(args.get("padding", 0), kernel, dilation, where),
                    dilation, int(args.get("groups", 1)), args.get("padding_mode", "zeros"), int(args["in_channels"]))


def _patches(x: Tensor, geo: Geometry) -> Tensor:
    """(groups, rows, in/groups * kh * kw): every patch the conv multiplies by its kernel."""
    nd = len(geo.kernel)
    if x.dim() == nd + 1:  # an unbatched input, as nn.Conv accepts
        x = x.unsqueeze(0)
    pad = tuple(q for lr in reversed(geo.padding) for q in lr)
    if any(pad):
        x = F.pad(x, pad, mode="constant" if geo.padding_mode == "zeros" else geo.padding_mode)
    lift = (lambda t, one: (one, *t)) if nd == 1 else (lambda t, one: t)
    if nd == 1:
        x = x.unsqueeze(2)
    cols = F.unfold(x, lift(geo.kernel, 1), dilation=lift(geo.dilation, 1), stride=lift(geo.stride, 1))
    n, feats, positions = cols.shape
    cols = cols.reshape(n, geo.groups, feats // geo.groups, positions)
    return cols.permute(1, 0, 3, 2).reshape(geo.groups, n * positions, feats // geo.groups)


@dataclass
class Covariance:
    """``E[x x^T]`` and ``E[x]`` of a layer's inputs (per conv group), in float64.

    Attributes:
        sigma: (groups, n, n) second moments; ``n`` the input features (patch size for a conv).
        mean: (groups, n) first moments (for the output error with the bias).
        count: rows (patches) seen.
        input_shape: the first batch's input shape (for FLOPs at that size).
        damping: the whitening's eigenvalue floor, relative to the mean eigenvalue.
        where: the layer, for messages.
    """

    sigma: Tensor
    mean: Tensor
    count: int
    input_shape: tuple[int, ...] | None = None
    damping: float = DAMPING
    where: str = "calibration"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def features(self) -> int:
        return self.sigma.shape[-1]

    @property
    def groups(self) -> int:
        return self.sigma.shape[0]

    @property
    def matrix(self) -> Tensor:
        """The groups' average ``Sigma`` (n, n): what one whitening of the shared kernel uses."""
        return self.sigma.mean(0)

    def to(self, device: Any) -> Covariance:
        return Covariance(self.sigma.to(device), self.mean.to(device), self.count, self.input_shape, self.damping,
                          self.where)

    def padded(self, sizes: Sequence[int], padded: Sequence[int]) -> Covariance:
        """The covariance of inputs zero-padded from the in-side axes ``sizes`` to ``padded``
        (the padded features get the damping's variance so that whitening stays defined;
        the layer feeds them zeros, so their weights never count)."""
        if tuple(sizes) == tuple(padded):
            return self
        g = self.groups
        floor = float(self.matrix.diagonal().mean()) or 1.0
        sig = self.sigma.new_zeros((g, *padded, *padded))
        sig[(slice(None), *(slice(0, s) for s in sizes), *(slice(0, s) for s in sizes))] = \
            self.sigma.reshape(g, *sizes, *sizes)
        n = math.prod(padded)
        sig = sig.reshape(g, n, n)
        real = torch.zeros(padded, dtype=torch.bool, device=sig.device)
        real[tuple(slice(0, s) for s in sizes)] = True
        fake = ~real.reshape(-1)
        sig[:, fake, fake] += floor
        mean = self.mean.new_zeros((g, *padded))
        mean[(slice(None), *(slice(0, s) for s in sizes))] = self.mean.reshape(g, *sizes)
        return Covariance(sig, mean.reshape(g, n), self.count, self.input_shape, self.damping, self.where)

    # ------------------------------------------------------------------ errors, no data pass
    def _rows(self, w: Tensor) -> Tensor:
        """A weight (out, ...) as (groups, out / groups, n) in float64."""
        w = w.detach().to(self.sigma.device, torch.float64)
        out = w.shape[0]
        if w.numel() != out * self.features:
            raise ShapeError(f"{self.where}: a weight of shape {tuple(w.shape)} does not take the {self.features} "
                             "input features of the calibration covariance")
        return w.reshape(self.groups, out // self.groups, self.features)

    def energy(self, w: Tensor) -> float:
        """``tr(W Sigma W^T)``: the mean squared norm of ``W x``."""
        r = self._rows(w)
        return float(torch.einsum("gon,gnm,gom->", r, self.sigma, r))

    def output_error(self, weight: Tensor, approx: Tensor, bias: Tensor | None = None) -> float:
        """Relative error of the layer's output on the calibration inputs, ``sqrt(tr(E Sigma E^T) /
        E||W x + b||^2)`` with ``E = W - approx``: what ``layer(x)`` vs the dense layer's gives."""
        dev = self.sigma.device
        err = self.energy(weight.detach().to(dev, torch.float64) - approx.detach().to(dev, torch.float64))
        ref = self.energy(weight)
        if bias is not None:
            r = self._rows(weight)
            b = bias.detach().to(self.sigma.device, torch.float64).reshape(self.groups, -1)
            ref += 2 * float(torch.einsum("go,gon,gn->", b, r, self.mean)) + float(b.pow(2).sum())
        return math.sqrt(max(err, 0.0) / ref) if ref > 0 else math.sqrt(max(err, 0.0))


class Accumulator:
    """Streaming sums of ``x x^T`` and ``x`` over batches of a layer's inputs."""

    def __init__(self, layer: Any, where: str = "calibration", features: int | None = None,
                 layer_text: str = "the layer") -> None:
        self.where, self.layer_text = where, layer_text
        self.geo = geometry_of(layer, where)
        if features is None:
            features = self.geo.features if self.geo is not None else _in_features(layer, where)
        self.features = features
        self.sum: Tensor | None = None
        self.first: Tensor | None = None
        self.count = 0
        self.input_shape: tuple[int, ...] | None = None

    def add(self, x: Tensor, keep: Tensor | None = None) -> None:
        """Add one batch of inputs (any leading dims for a linear layer; (N, C, ...) for a conv).
        ``keep``: a mask over a linear layer's leading dims (a tokenizer's ``attention_mask`` for
        ``x`` of shape (batch, tokens, features)); rows where it is 0 (padding) are left out. A mask
        of another shape than those dims is ignored (a pooler's (batch, features) input)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = type(x).__name__ if not isinstance(x, Tensor) else f"a {x.dtype} tensor"
            raise ShapeError(f"{self.where}: calibration inputs must be floating-point tensors, got {got}")
        x = x.detach()
        if self.input_shape is None:
            self.input_shape = tuple(x.shape)
        if self.geo is None:
            if x.dim() < 1 or x.shape[-1] != self.features:
                raise ShapeError(f"{self.where}: calibration inputs of shape {tuple(x.shape)} do not fit "
                                 f"{self.layer_text}: it takes {self.features} input features (the last dimension)")
            if keep is not None and tuple(keep.shape) == tuple(x.shape[:-1]):
                x = x[keep.to(device=x.device) != 0]
            rows = x.reshape(1, -1, self.features)
        else:
            nd = len(self.geo.kernel)
            if x.dim() not in (nd + 1, nd + 2) or x.shape[-nd - 1] != self.geo.in_channels:
                raise ShapeError(f"{self.where}: calibration inputs of shape {tuple(x.shape)} do not fit "
                                 f"{self.layer_text}: it takes (N, {self.geo.in_channels}, {', '.join(['...'] * nd)})")
            try:
                rows = _patches(x, self.geo)
            except (RuntimeError, NotImplementedError) as err:
                raise ShapeError(f"{self.where}: calibration inputs of shape {tuple(x.shape)} do not fit "
                                 f"{self.layer_text}: {err}") from err
        if not bool(torch.isfinite(rows).all()):
            raise ShapeError(f"{self.where}: the calibration inputs contain NaN or inf")
        g = rows.shape[0]
        if self.sum is None:
            self.sum = rows.new_zeros((g, self.features, self.features), dtype=torch.float64)
            self.first = rows.new_zeros((g, self.features), dtype=torch.float64)
        step = max(1, CHUNK // max(1, g * self.features))
        for k in range(0, rows.shape[1], step):
            part = rows[:, k: k + step].to(torch.float64)
            self.sum.baddbmm_(part.transpose(1, 2), part)
            self.first += part.sum(1)
        self.count += rows.shape[1]

    def result(self, damping: float = DAMPING) -> Covariance:
        """The covariance; an error when no sample was seen; a warning when fewer samples than features."""
        if self.sum is None or self.count == 0:
            raise ShapeError(f"{self.where}: too few calibration samples: the layer saw none (an empty batch, or the "
                             "model never called it); give a batch with at least one row")
        if self.count < self.features:
            warnings.warn(f"{self.where}: {self.count} calibration samples for {self.features} input features: the "
                          f"covariance has rank <= {self.count}, its whitening leans on damping={damping}; give more "
                          "samples for a better data-aware fit", stacklevel=3)
        return Covariance(self.sum / self.count, self.first / self.count, self.count, self.input_shape,
                          damping, self.where)


def _in_features(layer: Any, where: str) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, dict) and "in_features" in layer:
        return int(layer["in_features"])
    raise AdtnError(f"{where}: needs an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(layer).__name__}")


def _input_of(batch: Any, where: str) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise ShapeError(f"{where}: a calibration batch of a layer is a tensor (or an (x, y) pair), got "
                     f"{type(batch).__name__}")


def covariance(layer: Any, data: Any, *, damping: float = DAMPING, where: str | None = None,
               layer_text: str = "the layer") -> Covariance:
    """The ``Covariance`` of ``layer``'s inputs: ``data`` is a batch (a tensor, an ``(x, y)`` pair),
    an iterable of batches (a DataLoader), or already a ``Covariance`` (returned checked)."""
    where = where or f"calibration of {type(layer).__name__}"
    acc = Accumulator(layer, where, layer_text=layer_text)
    if isinstance(data, Covariance):
        if data.features != acc.features:
            raise ShapeError(f"{where}: a calibration covariance over {data.features} features does not fit the "
                             f"layer's {acc.features} input features")
        return data
    if isinstance(data, (Tensor, tuple, list)):
        acc.add(_input_of(data, where))
    elif isinstance(data, Iterable):
        for batch in data:
            acc.add(_input_of(batch, where))
    else:
        raise ShapeError(f"{where}: calibration must be a tensor batch, an (x, y) pair, an iterable of batches or a "
                         f"Covariance, got {type(data).__name__}")
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 <= damping < 1:
        raise AdtnError(f"{where}: damping is a fraction of the mean eigenvalue in [0, 1), got {damping!r}")
    return acc.result(float(damping))

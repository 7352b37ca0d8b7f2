"""What ``adtn.compress`` did, per layer: ``Report`` (a readable table) and its ``LayerRow``s.

Parameters are the weight's (the bias is kept dense and counted in neither column; the
model totals below the table count everything). FLOPs are those of one inference forward
pass (multiply-adds x 2) per sample: for a conv at the calibration input size, for a linear
layer per input row times the rows of a sample; without a calibration batch a conv's FLOPs
are per output position and a linear layer's per row. A TN layer is costed in the forward
mode it picks in eval mode (rebuilt weight cached) at the calibration batch size: ``dense``
then costs what the dense layer does, ``direct`` what its network or fast conv form does.

    report.rows[0].template, report.total_params_after, print(report), report.to_markdown()
    adtn.Report.from_model(loaded_model)   # the table of a saved compressed model (no errors)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .shapes.search import SVD_MARK
from .train import eval_mode

__all__ = ["LayerRow", "Report", "layer_flops"]

PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class LayerRow:
    """One compressed layer.

    Attributes:
        name: the module's name in the model (``model.get_submodule(name)``).
        type: the dense layer's class name (``Linear``, ``Conv2d``, ``Conv1d``).
        template: the template the layer now uses.
        options: the template's build options (ranks, modes, ...).
        params_before, params_after: weight parameters of the dense layer and of the network.
        flops_before, flops_after: inference FLOPs per sample (see the module doc).
        forward: the forward mode (and form) the TN layer picks, e.g. ``direct/tucker2``.
        weight_error: relative Frobenius error of the rebuilt weight.
        calib_error: relative Frobenius error of the layer's output on its calibration input
            (None without a calibration batch).
        candidates: per candidate template tried (``mixed``, ``auto``), the error that chose it.
        note: why something is unusual (e.g. the budget was below the layer's smallest size).
        shape: the shape search's choice (``ShapeChoice.summary()``: the shape, its error, the
            best runner-up's and the default shape's), empty when the shape was not searched.
    """

    name: str
    type: str
    template: str
    options: dict[str, Any]
    params_before: int
    params_after: int
    flops_before: int | None = None
    flops_after: int | None = None
    forward: str = ""
    weight_error: float | None = None
    calib_error: float | None = None
    candidates: dict[str, float] = field(default_factory=dict)
    note: str = ""
    shape: str = ""

    @property
    def ratio(self) -> float:
        """Compression ratio of the weight: params_before / params_after."""
        return self.params_before / max(1, self.params_after)

    @property
    def share(self) -> float:
        """The fraction of its dense weight the layer kept: params_after / params_before."""
        return self.params_after / max(1, self.params_before)

    @property
    def options_text(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.options.items() if k != "clip")


@dataclass
class Report:
    """Per-layer results of ``adtn.compress`` and their totals; ``str()`` is a table.

    Attributes:
        rows: one ``LayerRow`` per compressed layer, in model order.
        skipped: ``(name, reason)`` of the Linear / Conv layers left dense.
        policy: the policy, as text.
        budget: the requested parameter fraction of the compressed layers (None: sizes given).
        model_params_before, model_params_after: every parameter of the model.
        model_error: relative Frobenius error of the model's output on the first calibration batch
            (every floating tensor of a tuple / dict output, as a transformers model returns).
        flops_unit: what the FLOPs columns count.
    """

    rows: list[LayerRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    policy: str = ""
    budget: float | None = None
    model_params_before: int | None = None
    model_params_after: int | None = None
    model_error: float | None = None
    flops_unit: str = "per sample"
    allocation: str = ""  # how the budget was shared: "uniform", "global" (by whitened error), "" (sizes given)

    # ------------------------------------------------------------------ totals
    @property
    def total_params_before(self) -> int:
        return sum(r.params_before for r in self.rows)

    @property
    def total_params_after(self) -> int:
        return sum(r.params_after for r in self.rows)

    @property
    def fraction(self) -> float:
        """Achieved parameter fraction of the compressed layers (compare with ``budget``)."""
        return self.total_params_after / max(1, self.total_params_before)

    @property
    def total_flops_before(self) -> int | None:
        return _sum(r.flops_before for r in self.rows)

    @property
    def total_flops_after(self) -> int | None:
        return _sum(r.flops_after for r in self.rows)

    def totals(self) -> dict[str, Any]:
        return {
            "params_before": self.total_params_before,
            "params_after": self.total_params_after,
            "fraction": self.fraction,
            "ratio": self.total_params_before / max(1, self.total_params_after),
            "flops_before": self.total_flops_before,
            "flops_after": self.total_flops_after,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "model_error": self.model_error,
        }

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: rows (with ``ratio``), skipped layers, totals and settings."""
        rows = [{**asdict(r), "options": {k: _jsonable(v) for k, v in r.options.items()}, "ratio": r.ratio}
                for r in self.rows]
        return {"policy": self.policy, "budget": self.budget, "allocation": self.allocation,
                "flops_unit": self.flops_unit, "rows": rows,
                "skipped": [list(s) for s in self.skipped], "totals": self.totals()}

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        head = ["layer", "type", "template", "ranks / options", "params", "params TN", "ratio", "FLOPs",
                "FLOPs TN", "forward", "weight err", "calib err"]
        body = [[r.name, r.type, r.template, r.options_text, f"{r.params_before:,}", f"{r.params_after:,}",
                 f"{r.ratio:.1f}x", _flops(r.flops_before), _flops(r.flops_after), r.forward, _err(r.weight_error),
                 _err(r.calib_error)] for r in self.rows]
        t = self.totals()
        body.append(["total", "", "", f"{t['fraction']:.2%} of dense", f"{t['params_before']:,}",
                     f"{t['params_after']:,}", f"{t['ratio']:.1f}x", _flops(t["flops_before"]),
                     _flops(t["flops_after"]), "", "", _err(self.model_error) if self.model_error is not None
                     else ""])
        return head, body, self._footer()

    def _footer(self) -> list[str]:
        lines = [f"policy {self.policy}" + (f", budget {self.budget:g} of the compressed layers' parameters, "
                                            f"achieved {self.fraction:.4f}" if self.budget is not None else "")]
        if self.model_params_before is not None:
            lines.append(f"model parameters {self.model_params_before:,} -> {self.model_params_after:,} "
                         f"({self.model_params_before / max(1, self.model_params_after):.1f}x)")
        if self.model_error is not None:
            lines.append(f"model output error on the calibration batch {self.model_error:.4f} (total row, calib err)")
        lines.append(f"FLOPs {self.flops_unit}; params count weights only (biases stay dense)")
        if self.allocation and self.rows:
            how = "by output error per parameter" if self.allocation == "global" else "the same fraction each"
            lines.append(f"allocation {self.allocation} ({how}): "
                         + ", ".join(f"{r.name} {r.share:.1%}" for r in self.rows))
        lines += [f"left dense: {name} ({why})" for name, why in self.skipped]
        lines += [f"note: {r.name}: {r.note}" for r in self.rows if r.note]
        lines += [f"shape {r.name}: {r.shape}" for r in self.rows if r.shape]
        if any(SVD_MARK in r.shape for r in self.rows):
            lines.append("SVD-like shapes err least as compressed but fine-tune worse than the balanced ones at high "
                         "compression: pass shape='default' to compare (docs/compressing_models.md)")
        return lines

    def __str__(self) -> str:
        head, body, footer = self._table()
        widths = [max(len(row[k]) for row in [head, *body]) for k in range(len(head))]
        left = {0, 1, 2, 3, 9}

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in
                             enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(line(head))
        out = [line(head), rule, *(line(row) for row in body[:-1]), rule, line(body[-1])]
        return "\n".join(out + footer)

    def to_markdown(self) -> str:
        """The table as GitHub markdown, the footer as a list below it."""
        head, body, footer = self._table()

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        align = ["---" if k in (0, 1, 2, 3, 9) else "---:" for k in range(len(head))]
        body[-1] = [f"**{c}**" if c else c for c in body[-1]]
        return "\n".join([line(head), line(align), *(line(r) for r in body), ""] + [f"- {f}" for f in footer])

    def __repr__(self) -> str:
        return (f"Report(policy={self.policy!r}, budget={self.budget!r}, layers={len(self.rows)}, "
                f"params {self.total_params_before:,} -> {self.total_params_after:,})")

    # ------------------------------------------------------------------ from a model
    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Sequence[int] | None = None) -> Report:
        """The table of a model's TN layers (no errors: the dense weights are gone).

        ``input_shape``: the model's input shape, for FLOPs at that size (a forward pass on
        zeros finds each layer's input shape); None: per output position / per row.
        """
        from .layers import TNLayer

        shapes = _input_shapes(model, input_shape) if input_shape is not None else {}
        rows = []
        for name, m in model.named_modules():
            if isinstance(m, TNLayer):
                before, _ = layer_flops(_dense_twin(m), shapes.get(name))
                after, fwd = layer_flops(m, shapes.get(name))
                choice = getattr(m, "shape_choice", None)
                kind = _TN_TYPES.get(type(m).__name__, type(m).__name__)
                rows.append(LayerRow(name or ".", kind, m.template or f"graph {m.structure.name!r}",
                                     dict(m.template_options), math.prod(m.axes.values()), m.num_tn_params, before,
                                     after, fwd, shape="" if choice is None else choice.summary()))
        n = sum(p.numel() for p in model.parameters())
        dense = n - sum(r.params_after - r.params_before for r in rows)
        return cls(rows, policy="(from the saved model)", model_params_before=dense, model_params_after=n,
                   flops_unit="per sample" if input_shape is not None else "per output position / row")


_TN_TYPES = {"TNLinear": "Linear", "TNConv2d": "Conv2d", "TNConv1d": "Conv1d"}


# ---------------------------------------------------------------------- FLOPs
def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_pad(m: nn.Module, nd: int) -> tuple[int, ...]:
    if m.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    if m.padding == "valid":
        return (0,) * nd
    return tuple(m.padding)


def _nominal_shape(m: nn.Module) -> tuple[int, ...]:
    """An input giving an 8-wide (8 x 8) output: conv FLOPs per output position divide by it."""
    nd = len(m.kernel_size)
    pad = _conv_pad(m, nd)
    spatial = [max(1, 7 * s + d * (k - 1) + 1 - 2 * p) for k, s, p, d in zip(m.kernel_size, m.stride, pad,
                                                                              m.dilation)]
    return (1, m.in_channels, *spatial)


def _dense_flops(m: nn.Module, shape: Sequence[int]) -> int:
    """FLOPs of a dense Linear / Conv on an input of ``shape`` (whole batch; a conv's unbatched)."""
    if isinstance(m, nn.Linear):
        return 2 * math.prod(shape[:-1]) * m.out_features * m.in_features
    nd = len(m.kernel_size)
    n = shape[0] if len(shape) == nd + 2 else 1
    pad = _conv_pad(m, nd)
    out = [_out_size(k_in, k, s, p, d) for k_in, k, s, p, d in zip(shape[-nd:], m.kernel_size, m.stride, pad,
                                                                      m.dilation)]
    fan_in = m.in_channels // m.groups * math.prod(m.kernel_size)
    return 2 * n * math.prod(out) * m.out_channels * fan_in


def layer_flops(m: nn.Module, shape: Sequence[int] | None = None) -> tuple[int, str]:
    """(FLOPs per sample, forward mode) of a Linear / Conv or TN layer on an input of ``shape``.

    ``shape`` None: a linear layer per row, a conv per output position. A TN layer is costed in
    the mode it picks in eval mode with its weight cached (see the module doc); the layer
    itself counts the FLOPs of that form (``TNLayer.flops``).
    """
    from .layers import TNLayer

    conv = hasattr(m, "kernel_size")
    per = 1
    if shape is None:
        shape = _nominal_shape(m) if conv else (1, m.in_features)
        per = 64 if conv and len(m.kernel_size) == 2 else 8 if conv else 1
    shape = tuple(int(s) for s in shape)
    batched = len(shape) == len(m.kernel_size) + 2 if conv else len(shape) > 1
    samples = (shape[0] if batched else 1) * per
    if not isinstance(m, TNLayer):
        return _dense_flops(m, shape) // samples, "dense"
    with eval_mode(m), torch.no_grad():
        m.dense_weight()  # cache it, as inference does
        flops, form = m.flops(shape)
    return int(flops) // samples, "dense" if form == "dense" else f"direct/{form}"


def _dense_twin(m: nn.Module) -> nn.Module:
    """A meta-device dense layer shaped like the TN layer ``m`` (for its dense FLOPs)."""
    if getattr(m, "kind", None) == "linear":
        return nn.Linear(m.in_features, m.out_features, device="meta")
    cls = nn.Conv2d if len(m.kernel_size) == 2 else nn.Conv1d
    pad = m.padding if isinstance(m.padding, str) else tuple(m.padding)
    return cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, pad, m.dilation, groups=m.groups, device="meta")


def _input_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Each TN / Linear / Conv layer's input shape in a forward pass of zeros."""
    from .layers import TNLayer

    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []

    def keep(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (TNLayer, *PLAIN)):
            hooks.append(m.register_forward_pre_hook(keep(name)))
    p = next(model.parameters(), None)
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(tuple(input_shape), dtype=p.dtype if p is not None else None,
                              device=p.device if p is not None else None))
    finally:
        for h in hooks:
            h.remove()
    return shapes


# ---------------------------------------------------------------------- formatting
def _sum(values) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _flops(v: int | None) -> str:
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return str(v)


def _err(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_short(x) for x in v) + ")"
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)

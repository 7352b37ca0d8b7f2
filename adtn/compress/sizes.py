"""One layer's job in ``compress``: its candidate formats, the ladder of sizes each can take, the choice made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..budget import knob_for_budget
from ..errors import AdtnError, RankError, TemplateError
from ..options import resolve
from ..templates import get

__all__ = ["LAYER_KEYS", "MIN_GAIN", "SIZE_KEYS", "TOLERANCE", "Job", "Ladder", "make_ladder"]

LAYER_KEYS = ("init", "forward", "fit_options", "shape")  # encode options that are not the template's
SIZE_KEYS = ("rank", "depth", "budget", "tol")
TOLERANCE = 0.1
MIN_GAIN = 0.1  # a layer whose network saves less than this share of its parameters stays dense


@dataclass
class Ladder:
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


def make_ladder(where: str, module: nn.Module, template: str, opts: Mapping[str, Any]) -> Ladder:
    from ..layers import TNConv1d, TNConv2d, TNLinear

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
    ladder = Ladder(template, knob, spec.axes, kwargs, weight.numel())
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


@dataclass
class Job:
    name: str
    module: nn.Module
    candidates: list[str]
    opts: dict[str, Any]
    fixed: bool  # the options give the size
    chosen: str = ""
    ladders: dict[str, Ladder] = field(default_factory=dict)
    ladder: Ladder | None = None
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

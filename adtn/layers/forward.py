"""How a TN layer runs its forward pass: rebuild the weight, or stream the input through the cores.

``choose`` compares costs derived from the planner's plans (never tensor values): ``dense``
costs one contraction of the network (nothing when the eval-mode weight is cached) plus the
dense op; ``direct`` costs the contraction with the input batch as one more node. A cost is
FLOPs plus a weight per element moved (``MEMORY_WEIGHT``, ``ACTIVATION_WEIGHT``).

The executors themselves live in ``chain.py`` (a path of cores streamed without transposes)
and ``adtn/conv_ops.py`` with the formats' conv fast forms (``Format.conv_form``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .. import conv_ops
from ..errors import AdtnError
from ..plan import Plan

__all__ = [
    "ACTIVATION_WEIGHT",
    "DIRECT_MARGIN",
    "MEMORY_WEIGHT",
    "MODES",
    "STATE_WEIGHT",
    "Choice",
    "check_mode",
    "choose",
    "plan_cost",
    "tn_cost",
    "traffic",
]

Mode = Literal["auto", "dense", "direct"]
MODES = ("auto", "dense", "direct")
# "auto" compares costs in FLOP-equivalents: FLOPs plus a weight per tensor element moved.
# A planned contraction moves its operands and intermediates through tensordot's permute
# copies, which are strided and slow (a 4096 x 4096 TT rebuild spends most of its time in
# the last one): MEMORY_WEIGHT per element, calibrated on 2 CPU threads against measured
# dense / streamed TT layers (batch 1 to 4096, ranks 4 to 32). Dense ops and conv stages
# stream contiguous activations: ACTIVATION_WEIGHT per element read or written.
MEMORY_WEIGHT = 400
ACTIVATION_WEIGHT = conv_ops.ACTIVATION_WEIGHT  # defined with the conv stages it weighs
# A chain executor's step is a product that streams its state once; it costs the larger of its
# FLOPs and STATE_WEIGHT per state element read or written, so thin products (a bond or mode
# below ~64) are memory-bound (calibrated on 2 CPU threads against measured 4096 x 4096 TT
# layers, ranks 4 to 64, batch 16 to 4096: merging neighbouring cores into fewer, larger
# products wins even at more FLOPs).
STATE_WEIGHT = 128
# direct must be this much cheaper than dense to be picked (dense is one well-tuned kernel)
DIRECT_MARGIN = 1.0


def check_mode(mode: str, where: str) -> str:
    """``mode`` if it is one of ``MODES``, else an AdtnError listing them."""
    if mode not in MODES:
        raise AdtnError(f"{where}: forward must be one of {list(MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class Choice:
    """The forward mode picked for one input shape, and the costs (FLOP-equivalents) that decided it.

    ``mode`` is ``"dense"`` or ``"direct"``; ``form`` says how direct runs (``"stream"``: the
    input contracted through the network; ``"unfold"``: im2col then stream; ``"tucker2"``,
    ``"cp"``, ``"kronecker"``: a conv format's fast form) and is ``"dense"`` for dense.
    """

    mode: str
    form: str
    dense_cost: int
    direct_cost: int


def choose(mode: str, dense_cost: int, direct_cost: int | None, form: str = "stream") -> Choice:
    """Resolve ``"auto"`` by cost; ``direct_cost`` None means direct cannot stream (dense it is)."""
    if direct_cost is None:
        mode, direct_cost = "dense", -1
    elif mode == "auto":
        mode = "direct" if direct_cost * DIRECT_MARGIN < dense_cost else "dense"
    return Choice(mode, form if mode == "direct" else "dense", int(dense_cost), int(direct_cost))


def traffic(plan: Plan) -> int:
    """Elements read and written by a plan's pairwise steps (operands plus results), from its path."""
    sig = plan.signature
    size = sig.size_dict
    terms = [s for _, s in sig.operands]
    total = 0
    for positions in plan.cost.path:
        picked = [terms[i] for i in positions]
        for i in sorted(positions, reverse=True):
            terms.pop(i)
        keep = "".join(terms) + sig.output
        result = "".join(dict.fromkeys(c for t in picked for c in t if c in keep))
        total += sum(math.prod(size[c] for c in t) for t in picked) + math.prod(size[c] for c in result)
        terms.append(result)
    return total


def plan_cost(plan: Plan) -> int:
    """FLOPs plus ``MEMORY_WEIGHT`` per element moved."""
    return int(plan.cost.flops) + MEMORY_WEIGHT * traffic(plan)


def tn_cost(tn: Any, feed: Sequence[str] = (), batch: int | None = None) -> int | None:
    """Cost of ``tn.dense()`` (no ``feed``) or of streaming a batch on ``feed``; None when the
    network ``tn`` cannot stream (a deep ADTN past depth 1, or one whose axes are padded to 2^Q)."""
    feed = tuple(feed)
    if feed:
        p = tn.stream_plan(feed, batch)
        return None if p is None else plan_cost(p)
    p = tn.dense_plan()
    if p is None:  # dense() runs several passes (a deep ADTN's layers)
        return int(tn.cost().flops) + MEMORY_WEIGHT * tn.dense_traffic()
    return plan_cost(p)

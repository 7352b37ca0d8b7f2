"""The fused executor's schedule: a layer's gates grouped into windows of neighbouring legs.

Each window is one pass over the state (``module.py``): its gates, multiplied into one small
2^w x 2^w matrix, act on legs [lo, hi) in one matmul.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .operators import trace_gates

if TYPE_CHECKING:
    from .structure import DeepTN

__all__ = ["fused_schedule", "windows"]


def windows(pairs: Sequence[tuple[int, int]], q: int, width: int = 4) -> list[tuple[int, int, list[int]]]:
    """Group one layer's gates into windows of at most ``width`` neighbouring legs.

    Each window (lo, hi, gate indices) is one pass over the state: its gates, fused into a
    2^(hi-lo) matrix, act on legs [lo, hi). Windows sweep left to right; a gate joins a window
    when both its legs lie inside and no earlier gate that shares a leg is left for later, so
    the application order of the gates is kept. A window that would leave 1 or 2 legs after it
    is stretched to the last leg when that keeps it within ``width + 1`` legs (a thin trailing
    dimension makes a slow batched matmul).
    """
    pending = list(range(len(pairs)))
    out = []
    while pending:
        lo = min(pairs[k][0] for k in pending)
        for _ in range(2):
            hi = q if q - lo <= width + 1 else lo + width
            chosen, blocked = [], set()
            for k in pending:
                a, b = pairs[k]
                if lo <= a and b < hi and a not in blocked and b not in blocked:
                    chosen.append(k)
                else:
                    blocked.update((a, b))
            if chosen:
                break
            lo = pairs[pending[0]][0]  # the earliest pending gate always fits a window at its first leg
        lo, hi = min(pairs[k][0] for k in chosen), max(pairs[k][1] for k in chosen) + 1
        out.append((lo, q if 0 < q - hi <= 2 and q - lo <= width + 1 else hi, chosen))
        pending = [k for k in pending if k not in chosen]
    return out


def fused_schedule(deep: DeepTN, width: int = 5) -> tuple[list, dict[int, str]] | str:
    """The fused executor's plan: per layer, windows ``(lo, hi, [(gate, first leg), ...])``, and
    the fixed boundary node of each leg that has one; a reason (str) when some operator is not a
    nearest-neighbour gate chain (``trace_gates``)."""
    schedule = []
    for m, op in enumerate(deep.operators):
        gates = trace_gates(op, m, deep.q)
        if isinstance(gates, str):
            return f"operator {m} ({op.name!r}): {gates}"
        wins = windows([(a, b) for _, a, b in gates], deep.q, width)
        schedule.append([(lo, hi, [(gates[k][0], gates[k][1]) for k in idx]) for lo, hi, idx in wins])
    vectors = {}
    op = deep.operators[0]
    for name, a, b in trace_gates(op, 0, deep.q):
        for leg, j in (("i0", a), ("i1", b)):
            partner = op.partner((name, leg)) if leg in op.legs(name) else None
            if partner is not None and op.node(partner.node)["role"] == "fixed":
                vectors[j] = partner.node
    return schedule, vectors

"""``apply_split``: a deep ADTN's ``x @ W.T`` without applying all of its last operator to the state.

``apply_split(x)`` computes ``x @ dense().T`` for a weight (out, in): the last operator's gates on
the output legs only and on the input legs only act on the (much smaller) batch instead, and
only the gates that cross the out | in boundary (and those before them) pass over the state;
``TNLinear`` runs it at depth >= 2 when it streams fewer entries (``split_cost``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

from .kernels import apply_side, apply_window, window_matrix
from .operators import PREV, trace_gates
from .schedule import windows

__all__ = ["LastOperatorSplit"]


class LastOperatorSplit:
    """``DeepTNModule``'s ``apply_split`` and its schedule (a mixin: it reads the module's gates,
    windows and executor)."""

    def _split(self) -> tuple[list, list, list, int] | None:
        """The last operator's gates split for ``apply_split``: windows of the gates applied to the
        state (``mid``), of those acting on the output legs only and on the input legs only (legs
        counted from the side's first), and the number of output legs; None when not applicable
        (depth 1, the planner executor, a padded weight, or not two axes). Cached."""
        if "_split_cache" in self.__dict__:
            return self._split_cache
        result, d = None, self.deep
        last = d.operators[-1]
        axes = [ax for ax in last.outputs if ax != PREV]
        if self.executor == "fused" and d.depth >= 2 and d.exact and len(axes) == 2:
            q, q_out = d.q, len(last.axis_shape(axes[0]))
            gates = trace_gates(last, d.depth - 1, q)
            if not isinstance(gates, str):
                # a gate crossing the out | in boundary acts on the state; so does every gate that
                # must run before one that does (it shares a leg with it and comes earlier)
                mid, legs = set(), set()
                for k in range(len(gates) - 1, -1, -1):
                    _, a, b = gates[k]
                    if a < q_out <= b or {a, b} & legs:
                        mid.add(k)
                        legs |= {a, b}
                parts = ([g for k, g in enumerate(gates) if k in mid],
                         [g for k, g in enumerate(gates) if k not in mid and g[2] < q_out],
                         [(n, a - q_out, b - q_out) for k, (n, a, b) in enumerate(gates) if k not in mid and a >= q_out])
                width = max((hi - lo for wins in self._windows for lo, hi, _ in wins), default=5)
                result = tuple(
                    [(lo, hi, [(part[k][0], part[k][1]) for k in idx])
                     for lo, hi, idx in windows([(a, b) for _, a, b in part], n, width)]
                    for part, n in zip(parts, (q, q_out, q - q_out))
                ) + (q_out,)
        self.__dict__["_split_cache"] = result
        return result

    def split_cost(self, batch: int) -> tuple[int, int] | None:
        """(entries streamed by ``dense()``'s last operator, by ``apply_split``'s), passes times
        entries; None when the split does not apply."""
        split = self._split()
        if split is None:
            return None
        mid, outs, ins, q_out = split
        q = self._q  # plain data: forward asks this every call, and deep.q walks the graph
        full = len(self._windows[-1]) * 2**q
        return full, len(mid) * 2**q + batch * (len(outs) * 2**q_out + len(ins) * 2 ** (q - q_out))

    def apply_split(self, x: torch.Tensor, linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                    ) -> torch.Tensor:
        """``x`` (batch, in) @ W.T without applying all of the last operator to the 2^Q state.

        The last operator's gates that act on the output legs only form a matrix A, those on
        the input legs only B, the rest (gates crossing the boundary and those before them) M,
        so W = A · mat(M s) · B^T: ``x`` goes through B's windows (transposed, reversed) and the
        product through A's, each a pass over batch x 2^(legs) entries, and only M's windows
        pass over the state. Same numbers as ``x @ dense().T`` up to rounding; ``linear(z, w)``
        computes ``z @ w.T`` (default ``F.linear``).
        """
        mid, outs, ins, q_out = self._split()
        q, depth = self._q, self.deep.depth
        run = self._fused
        ckpt = self.checkpoint and torch.is_grad_enabled()
        state = run(0, None, None)
        for m in range(1, depth):
            state = self._activate(state, inplace=not ckpt)
            if m < depth - 1:
                state = _checkpoint(run, m, state, None, use_reentrant=False) if ckpt else run(m, state, None)
        tensors = {name: self.params[name] for name, role in self._roles[depth - 1] if role == "param"}
        tensors[self._scaled] = tensors[self._scaled] * self.effective_scale()

        def matrix(lo: int, hi: int, gates: list) -> torch.Tensor:
            return window_matrix([(tensors[name], a - lo) for name, a in gates], hi - lo)

        for lo, hi, gates in mid:
            state, _ = apply_window(state, q, matrix(lo, hi, gates), lo, hi, None)
        z = x
        for lo, hi, gates in reversed(ins):
            z = apply_side(z, matrix(lo, hi, gates).T, lo, hi, q - q_out)
        w = state.reshape(2**q_out, 2 ** (q - q_out))
        y = linear(z, w) if linear is not None else F.linear(z, w)
        for lo, hi, gates in outs:
            y = apply_side(y, matrix(lo, hi, gates), lo, hi, q_out)
        return y

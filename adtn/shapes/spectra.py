"""Singular-value tails of a weight's unfoldings, cached per unfolding (the shape search's bounds).

An unfolding (``Key``) says, for every axis of the weight, how the axis splits row-major into
runs of factors and which runs go to the matrix rows: ``((8, True), (4, False))`` for an out
axis of 32 is "the leading 8 on the rows, the trailing 4 on the columns". A Kronecker split
a (x) b is the unfolding ``((a_k, True), (b_k, False))`` per axis (Van Loan), a TT bond the one
whose rows hold every core left of it, an HT node the one whose rows hold its subtree.
A matrix and its transpose have the same singular values, so keys are canonical up to
swapping rows and columns.

``Unfoldings(dense).tail2(key, r, level)`` is ||M - M_r||^2 for the matrix M of ``key``:

- ``"exact"``: every singular value (the Gram matrix of the smaller side, float64 up to 2**16
  entries, else float32), used whenever it is cheap (smaller side * entries <= 2**26);
- ``"sketch"``: the energy a randomized range finder (r + 8 Gaussian columns, one power
  iteration) captures, a lower bound of the top-r energy, so the tail is an upper bound;
- ``"screen"``: a one-pass estimate that never copies the weight: a Khatri-Rao sketch of the
  larger side (Gaussian factors contracted mode by mode from the weight's own layout, the
  first contraction shared between unfoldings), whose first 16 columns find a range and the
  next 16 estimate the fraction of the energy in it (the top-min(r, 16) energy: pessimistic for
  r > 16).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["Key", "Unfoldings", "canonical", "kron_key", "prefix_key", "single_thread"]

Run = tuple[int, bool]
Key = tuple[tuple[Run, ...], ...]

EXACT_FLOPS = 2**26  # smaller side * entries below which the whole spectrum is computed
SMALL = 2**16  # entries up to which the exact Gram is formed in float64
RANGE, ENERGY = 16, 16  # screen: range columns, energy columns
OVERSAMPLE = 8


def _merge(runs: Sequence[Run]) -> tuple[Run, ...]:
    out: list[Run] = []
    for size, row in runs:
        if size == 1:
            continue
        if out and out[-1][1] == row:
            out[-1] = (out[-1][0] * size, row)
        else:
            out.append((size, row))
    return tuple(out)


def canonical(key: Key) -> Key:
    """Merged runs, and of a key and its transpose the smaller (same singular values)."""
    merged = tuple(_merge(axis) for axis in key)
    flipped = tuple(tuple((s, not r) for s, r in axis) for axis in merged)
    return min(merged, flipped)


def kron_key(a: Sequence[int], b: Sequence[int]) -> Key:
    """The Van Loan unfolding of the split a (x) b: rows a_1..a_d, columns b_1..b_d."""
    return canonical(tuple(((x, True), (y, False)) for x, y in zip(a, b)))


def prefix_key(sizes: Sequence[int], leading: Sequence[int]) -> Key:
    """Rows = the leading ``leading[k]`` of every axis k (a TT bond of a chain)."""
    return canonical(tuple(((x, True), (n // x, False)) for n, x in zip(sizes, leading)))


@contextmanager
def single_thread(on: bool = True) -> Iterator[None]:
    """Run small linear algebra on one thread: on a busy machine, OpenMP's fork and join around
    a 100 x 100 eigen-decomposition costs 100x the work (measured: 150 ms vs 1 ms)."""
    old = torch.get_num_threads()
    if not on or old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _gauss(rows: int, cols: int, seed: int, like: Tensor) -> Tensor:
    g = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(rows, cols, generator=g, dtype=like.dtype, device=like.device)


def _orth(y: Tensor) -> Tensor:
    """An orthonormal basis of y's range from the eigen-decomposition of its Gram (fast on tall y)."""
    with single_thread(y.numel() <= 2**20):
        for _ in range(2):  # the second pass restores orthogonality
            lam, vec = torch.linalg.eigh((y.mT @ y).double())
            keep = lam > lam[-1].clamp_min(1e-300) * 1e-10
            y = y @ (vec[:, keep] / lam[keep].sqrt()).to(y.dtype)
    return y


def _contract_run(dense: Tensor, a: int, c: int, b: int, omega: Tensor) -> Tensor:
    """(a, c, b) x (c, k) -> (a, k, b) in one GEMM on the weight's own layout: a trailing run b of
    at most 4 goes into the GEMM as omega (x) I_b (b times the FLOPs, but 4-7x faster than a
    batched matmul of a thin (c, b) slices, measured on 2 cores)."""
    k = omega.shape[1]
    if b == 1:
        return dense.reshape(a, c) @ omega
    if a > 1 and b <= 4:
        eye = torch.eye(b, dtype=omega.dtype, device=omega.device)
        return (dense.reshape(a, c * b) @ torch.kron(omega, eye)).reshape(a, k, b)
    return torch.matmul(omega.mT, dense.reshape(a, c, b))


class Unfoldings:
    """The singular-value information of one weight's unfoldings, computed once per key."""

    def __init__(self, dense: Tensor) -> None:
        if dense.dtype not in (torch.float32, torch.float64):
            dense = dense.float()
        self.dense = dense.detach().contiguous()
        self.numel = dense.numel()
        self.norm2 = float(torch.linalg.vector_norm(self.dense, dtype=torch.float64)) ** 2 or 1.0
        self._exact: dict[Key, Tensor] = {}
        self._sketch: dict[Key, tuple[int, Tensor]] = {}
        self._screen: dict[Key, Tensor] = {}
        self._first: tuple[tuple, Tensor] | None = None

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _runs(key: Key) -> list[Run]:
        return [run for axis in key for run in axis]

    def sides(self, key: Key) -> tuple[int, int]:
        """(rows, columns) of the key's matrix."""
        runs = self._runs(key)
        p = math.prod(s for s, r in runs if r)
        return p, self.numel // p

    def matrix(self, key: Key, rows_small: bool = True) -> Tensor:
        """The unfolding as a matrix (a copy), its smaller side first when ``rows_small``."""
        runs = self._runs(key)
        p, q = self.sides(key)
        want = not rows_small or p <= q
        perm = [k for k, (_, r) in enumerate(runs) if r == want] + [k for k, (_, r) in enumerate(runs) if r != want]
        t = self.dense.reshape([s for s, _ in runs]).permute(perm)
        return t.reshape(p if want else q, -1)

    def exact_ok(self, key: Key) -> bool:
        p, q = self.sides(key)
        return self.numel <= SMALL or min(p, q) * self.numel <= EXACT_FLOPS

    # ------------------------------------------------------------------ the three levels
    def exact(self, key: Key) -> Tensor:
        """Every squared singular value, descending (float64)."""
        if key not in self._exact:
            m = self.matrix(key)
            gram = (m.double() @ m.double().mT) if self.numel <= SMALL else (m @ m.mT).double()
            with single_thread():
                lam = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
            self._exact[key] = lam.cpu()
        return self._exact[key]

    def sketch(self, key: Key, r: int) -> Tensor:
        """Lower bounds of the top squared singular values from a randomized range finder with
        r + 8 columns and one power iteration (at least r of them, descending)."""
        hit = self._sketch.get(key)
        if hit is not None and hit[0] >= r:
            return hit[1]
        if min(self.sides(key)) <= 4 * (r + OVERSAMPLE):  # one Gram GEMM costs less than the sketch's four
            return self.exact(key)
        m = self.matrix(key)  # (p, q), p <= q
        k = min(m.shape[0], r + OVERSAMPLE)
        y = m @ _gauss(m.shape[1], k, 7919 + k, m)
        y = m @ (_orth(y).mT @ m).mT  # Q^T M, not M^T Q: a transposed GEMM with few columns is ~10x slower
        b = _orth(y).mT @ m
        gram = (b @ b.mT).double()
        with single_thread():
            lam = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).cpu()
        self._sketch[key] = (r, lam)
        return lam

    def screen(self, key: Key) -> Tensor:
        """Estimated top-16 squared singular values from a copy-free Khatri-Rao sketch."""
        if key not in self._screen:
            y = self._kr_sketch(key, RANGE + ENERGY)
            with single_thread():
                q = _orth(y[:, :RANGE])
                y2 = y[:, RANGE:].double()
                c = q.double().mT @ y2  # the energy in the range as a fraction of the sketched energy
                lam = torch.linalg.eigvalsh(c @ c.mT).flip(0).clamp_min(0)  # (a ratio: the columns' scale cancels)
                self._screen[key] = (lam * (self.norm2 / max(float((y2 * y2).sum()), 1e-300))).cpu()
        return self._screen[key]

    def tail2(self, key: Key, r: int, level: str = "screen") -> float:
        """||M - M_r||_F^2 of the key's matrix M, at ``level`` (exact whenever that is cheap)."""
        p, q = self.sides(key)
        if r >= min(p, q):
            return 0.0
        if key in self._exact or self.exact_ok(key) or level == "exact":
            return float(self.exact(key)[r:].sum())
        if level == "sketch" or key in self._sketch and self._sketch[key][0] >= r:
            return max(self.norm2 - float(self.sketch(key, r)[:r].sum()), 0.0)
        return max(self.norm2 - float(self.screen(key)[:r].sum()), 0.0)

    # ------------------------------------------------------------------ the copy-free sketch
    def _kr_sketch(self, key: Key, k: int) -> Tensor:
        """M @ Omega (or M^T @ Omega, whichever side is larger is contracted): Omega's columns
        are Kronecker products of Gaussian vectors, one per contracted run, so every run is
        contracted from the weight's own layout. Returns (smaller side, k)."""
        runs = self._runs(key)
        p, q = self.sides(key)
        kept = p <= q  # the flag of the runs that stay (the smaller side)
        sizes = [s for s, _ in runs]
        labels = [chr(97 + i) for i in range(len(runs))]
        gone = self._order(runs, kept, k)
        first = gone[0]
        a, c, b = math.prod(sizes[:first]), sizes[first], math.prod(sizes[first + 1:])
        sig = (a, c, b, k)
        if self._first is None or self._first[0] != sig:
            self._first = (sig, _contract_run(self.dense, a, c, b, _gauss(c, k, hash(sig) % 2**31, self.dense)))
        j = "z"
        x = self._first[1].reshape(sizes[:first] + [k] + sizes[first + 1:])
        dims = labels[:first] + [j] + labels[first + 1:]
        rest = gone[1:]  # the other runs: one Gaussian factor each, contracted column by column
        factors = [_gauss(sizes[i], k, hash((sig, i, sizes[i])) % 2**31, self.dense) for i in rest]
        keep = "".join(d for d in dims if d != j and d not in {labels[i] for i in rest}) + j
        spec = ",".join(["".join(dims)] + [labels[i] + j for i in rest]) + "->" + keep
        with single_thread(x.numel() <= 2**22):
            x = torch.einsum(spec, x, *factors)
        return x.reshape(-1, k)

    @staticmethod
    def _order(runs: list[Run], kept: bool, k: int) -> list[int]:
        """The contracted runs in contraction order: largest first (the smallest intermediate),
        the last run first among equals (a plain GEMM on the weight's layout)."""
        last = len(runs) - 1
        return sorted((i for i, (_, r) in enumerate(runs) if r != kept), key=lambda i: (-runs[i][0], i != last))

    def first_signature(self, key: Key) -> tuple:
        """What ``_kr_sketch`` contracts first (keys sharing it share that pass over the weight)."""
        runs = self._runs(key)
        p, q = self.sides(key)
        sizes = [s for s, _ in runs]
        f = self._order(runs, p <= q, RANGE + ENERGY)[0]
        return math.prod(sizes[:f]), sizes[f], math.prod(sizes[f + 1:])

"""Shape search benchmark (issue 8): search time and error of ``shape="auto"`` at budget 0.05.

For a 512x512x3x3 kernel and a 4096x4096 matrix (random with a decaying spectrum, like a
trained weight): the time of ``adtn.shapes.search`` for ``kronecker`` and ``tt``, its chosen
shape's error, the default rule's error and Tucker-2 (kernel) / truncated SVD at equal
parameters. Run: ``python benchmarks/shape_search.py [--small]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from adtn.shapes import search


def weight(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A weight with a power-law spectrum on its (out, rest) unfolding, like trained layers."""
    g = torch.Generator().manual_seed(seed)
    out, rest = shape[0], math.prod(shape[1:])
    k = min(out, rest)
    u = torch.linalg.qr(torch.randn(out, k, generator=g))[0]
    v = torch.linalg.qr(torch.randn(rest, k, generator=g))[0]
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -0.7
    return ((u * s) @ v.T).reshape(shape) + 1e-3 * torch.randn(shape, generator=g)


def svd_error(w: torch.Tensor, budget: float) -> float:
    m = w.reshape(w.shape[0], -1)
    r = int(budget * m.numel() // sum(m.shape))
    s = torch.linalg.svdvals(m.double())
    return math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))


def tucker2_error(w: torch.Tensor, budget: float) -> float:
    """HOSVD Tucker-2 (out, in) at the largest equal ranks within the budget."""
    f, c, kh, kw = w.shape
    r = max(r for r in range(1, min(f, c) + 1) if r * (f + c) + r * r * kh * kw <= budget * w.numel())
    u = torch.linalg.svd(w.reshape(f, -1).double(), full_matrices=False)[0][:, :r]
    v = torch.linalg.svd(w.permute(1, 0, 2, 3).reshape(c, -1).double(), full_matrices=False)[0][:, :r]
    core = torch.einsum("fchw,fa,cb->abhw", w.double(), u, v)
    approx = torch.einsum("abhw,fa,cb->fchw", core, u, v)
    return float((approx - w).norm() / w.norm())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="quarter-size weights (a quick run)")
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    div = 4 if args.small else 1
    cases = {"kernel": (512 // div, 512 // div, 3, 3), "matrix": (4096 // div, 4096 // div)}
    for name, shape in cases.items():
        w = weight(shape)
        axes = dict(zip(("out", "in", "kh", "kw"), shape))
        base = f"tucker2={tucker2_error(w, args.budget):.4f}" if w.dim() == 4 else ""
        print(f"{name} {shape} budget={args.budget}: svd={svd_error(w, args.budget):.4f} {base}")
        for template in ("kronecker", "tt"):
            t0 = time.perf_counter()
            c = search(template, w, axes, args.budget)
            dt = time.perf_counter() - t0
            print(f"  {template:9s} {dt:6.2f} s  auto err={c.error:.4f} default err={c.default_error}  "
                  f"({c.summary()})")


if __name__ == "__main__":
    main()

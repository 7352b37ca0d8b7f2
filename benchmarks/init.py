"""Template initialisers on trained-like weights: relative error and time at about 10% of the parameters.

    python benchmarks/init.py [--budget 0.1] [--repeats 3] [--threads 2] [--no-tensorly]

Weights (float32): a 512 x 512 linear weight and a 64 x 64 x 3 x 3 conv kernel, each a matrix
(out x rest) with a decaying spectrum (s_k = k^-1, a trained layer's typical shape) plus 5%
Gaussian noise. Each template runs at the largest uniform rank whose closed-form parameter
count is at most --budget of the dense weight's (semi-tensor ranks in steps of t = 2; on the
conv kernel Tucker's ranks are capped at the axis sizes and semi-Tucker compresses the
channels only; CP-ALS runs at most 100 sweeps). Where tensorly has the same
algorithm (TT-matrix SVD, HOSVD, partial HOSVD, CP-ALS) its error and time at the same ranks
are shown too. Time: best of --repeats.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adtn.errors import AdtnError
from adtn.templates import TEMPLATES, get
from adtn.templates.init_common import contract, rel_error

LINEAR = {"out": 512, "in": 512}
CONV = {"out": 64, "in": 64, "kh": 3, "kw": 3}


def trained_like(axes: dict[str, int], gen: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """(out x rest) = U diag(1/k) V^T + noise, reshaped to the axes."""
    out = axes["out"]
    rest = math.prod(axes.values()) // out
    k = min(out, rest)
    u = torch.linalg.qr(torch.randn(out, k, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(rest, k, generator=gen))[0]
    w = (u * (1.0 / torch.arange(1, k + 1))) @ v.T
    e = torch.randn(out, rest, generator=gen)
    return (w + noise * e * (w.norm() / e.norm())).reshape(tuple(axes.values()))


# conv options where the defaults do not fit: Tucker caps each rank at its axis size (kh = 3),
# semi-tensor Tucker compresses the channels only (3 is not divisible by t = 2)
OPTIONS = {"semi_tucker": {"compress": ("out", "in")}}


def rank_spec(name: str, axes: dict[str, int], r: int):
    return [min(r, n) for n in axes.values()] if name == "tucker" else r


def budget_rank(name: str, axes: dict[str, int], budget: float) -> int | None:
    """The largest uniform rank whose parameter count is at most budget * dense (None: none fits)."""
    formula, dense = TEMPLATES[name].formula, math.prod(axes.values())
    step = 2 if name.startswith("semi") else 1
    best = None
    for r in range(step, 4097, step):
        try:
            if formula(axes, rank=rank_spec(name, axes, r), **OPTIONS.get(name, {})) > budget * dense:
                break
        except AdtnError:  # a rank the template rejects (larger than useful, not divisible): stop
            break
        best = r
    return best


def best_of(repeats: int, fn):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def tensorly_ref(name: str, w: torch.Tensor, axes: dict[str, int], rank: int, repeats: int):
    """(seconds, relative error) of tensorly's same algorithm at the same rank, or None."""
    import tensorly as tl
    from tensorly.decomposition import parafac, partial_tucker, tensor_train_matrix, tucker

    from adtn.templates.factor import default_modes

    if name == "tt" and len(axes) == 2:
        modes = default_modes(axes)
        t = w.reshape(modes["out"] + modes["in"])
        ranks = [1] + [rank] * (len(modes["out"]) - 1) + [1]
        sec, f = best_of(repeats, lambda: tensor_train_matrix(t, ranks))
        return sec, rel_error(tl.tt_matrix_to_tensor(f).reshape(w.shape), w)
    if name == "tucker":
        ranks = rank_spec(name, axes, rank)
        sec, f = best_of(repeats, lambda: tucker(w, ranks, n_iter_max=0))
        return sec, rel_error(tl.tucker_to_tensor(f), w)
    if name == "tucker2":
        sec, ((core, fs), _) = best_of(repeats, lambda: partial_tucker(w, [rank, rank], modes=[0, 1], n_iter_max=0))
        return sec, rel_error(tl.tenalg.multi_mode_dot(core, fs, modes=[0, 1]), w)
    if name == "cp":
        sec, f = best_of(repeats, lambda: parafac(w, rank, n_iter_max=100, init="svd", tol=1e-8))
        return sec, rel_error(tl.cp_to_tensor(f), w)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tensorly", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_tensorly:
        import tensorly as tl

        tl.set_backend("pytorch")
    gen = torch.Generator().manual_seed(0)
    names = sorted(n for n, t in TEMPLATES.items() if t.init is not None)
    print(f"{'template':12s} {'weight':10s} {'rank':>5s} {'params %':>8s} {'adtn err':>9s} {'adtn s':>8s} "
          f"{'tl err':>9s} {'tl s':>8s}")
    for label, axes in (("512x512", LINEAR), ("64x64x3x3", CONV)):
        w = trained_like(axes, gen)
        for name in names:
            if len(axes) > 2 and "conv" not in TEMPLATES[name].kinds:
                continue
            rank = budget_rank(name, axes, args.budget)
            if rank is None:
                print(f"{name:12s} {label:10s}  no rank fits {args.budget:.0%} of the parameters")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                options = {"rank": rank_spec(name, axes, rank), **OPTIONS.get(name, {})}
                sec, (graph, tensors) = best_of(args.repeats, partial(get(name).init, w, axes, **options))
                ref = None if args.no_tensorly else tensorly_ref(name, w, axes, rank, args.repeats)
            err = rel_error(contract(graph, tensors), w)
            pct = 100 * graph.num_params / w.numel()
            tl_cols = f"{ref[1]:9.4f} {ref[0]:8.3f}" if ref else f"{'-':>9s} {'-':>8s}"
            print(f"{name:12s} {label:10s} {rank:5d} {pct:8.1f} {err:9.4f} {sec:8.3f} {tl_cols}")


if __name__ == "__main__":
    main()

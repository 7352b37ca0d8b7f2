"""Time adtn.decompose against tensorly (pytorch backend) at equal ranks, and compare errors.

    python benchmarks/decompose.py          # TT-SVD 4096x4096 as (8,)^8 at rank 16, HOSVD 512x512x3x3
    python benchmarks/decompose.py --full   # also TT-matrix (8,8,8,8)x(8,8,8,8), HOOI and the SVD path

Best of --repeats alternating runs each, in one process, with torch.set_num_threads(--threads).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from adtn.decompose import hosvd, tt_matrix_svd, tt_matrix_to_matrix, tt_svd, tt_to_tensor, tucker_to_tensor


def race(repeats: int, ours: Callable[[], object], theirs: Callable[[], object]) -> tuple[float, object, float, object]:
    """Best time of each over ``repeats`` alternating runs, so both see the same machine load."""
    best = [float("inf"), float("inf")]
    outs: list[object] = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((ours, theirs)):
            t0 = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], outs[0], best[1], outs[1]


def rel(approx: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(approx - ref) / torch.linalg.vector_norm(ref))


def noisy(t: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    e = torch.randn(t.shape, generator=gen)
    return t + noise * e * (t.norm() / e.norm())


def tt_input(kind: str, gen: torch.Generator) -> torch.Tensor:
    """4096 x 4096 as 8 legs of 8 (row-major reshape): Gaussian, or TT-rank 16 plus 1% noise."""
    if kind == "random":
        return torch.randn(4096, 4096, generator=gen).reshape((8,) * 8)
    ranks = [1] + [16] * 7 + [1]
    cores = [torch.randn(ranks[k], 8, ranks[k + 1], generator=gen) for k in range(8)]
    return noisy(tt_to_tensor(cores), 0.01, gen)


def tucker_input(kind: str, gen: torch.Generator) -> torch.Tensor:
    """512 x 512 x 3 x 3: Gaussian, or Tucker rank (128, 128, 3, 3) plus 1% noise."""
    if kind == "random":
        return torch.randn(512, 512, 3, 3, generator=gen)
    core = torch.randn(128, 128, 3, 3, generator=gen)
    factors = [torch.linalg.qr(torch.randn(512, 128, generator=gen))[0] for _ in range(2)]
    return noisy(tucker_to_tensor(core, factors), 0.01, gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also TT-matrix, HOOI and the plain-SVD path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import tensorly as tl
    from tensorly.decomposition import tensor_train, tensor_train_matrix, tucker

    tl.set_backend("pytorch")
    gen = torch.Generator().manual_seed(0)
    rows: list[tuple[str, float, float, float, float]] = []
    rep = args.repeats

    for kind in ("random", "lowrank+noise"):
        t = tt_input(kind, gen)
        tt_ranks = [1] + [16] * 7 + [1]
        ta, cores, tt_, tcores = race(rep, partial(tt_svd, t, 16), partial(tensor_train, t, tt_ranks))
        ea, et = rel(tt_to_tensor(cores), t), rel(tl.tt_to_tensor(tcores), t)
        rows.append((f"tt_svd (8,)^8 r16 {kind}", ta, tt_, ea, et))
        if args.full:
            ta, cores, tt_, tcores = race(rep, partial(tt_svd, t, 16, method="svd"), partial(tensor_train, t, tt_ranks))
            rows.append((f"  same, method=svd {kind}", ta, tt_, rel(tt_to_tensor(cores), t), et))
            w = t.reshape(4096, 4096)
            ta, cores, tt_, tcores = race(
                rep,
                partial(tt_matrix_svd, w, (8,) * 4, (8,) * 4, 16),
                partial(tensor_train_matrix, t, [1, 16, 16, 16, 1]),
            )
            ea, et = rel(tt_matrix_to_matrix(cores), w), rel(tl.tt_matrix_to_tensor(tcores), t)
            rows.append((f"tt_matrix (8^4)x(8^4) r16 {kind}", ta, tt_, ea, et))

    ranks = (128, 128, 3, 3)
    for kind in ("random", "lowrank+noise"):
        k = tucker_input(kind, gen)
        ta, (core, fs), tt_, tk = race(rep, partial(hosvd, k, ranks), partial(tucker, k, ranks, n_iter_max=0))
        ea, et = rel(tucker_to_tensor(core, fs), k), rel(tl.tucker_to_tensor(tk), k)
        rows.append((f"hosvd 512x512x3x3 {kind}", ta, tt_, ea, et))
        if args.full:
            _, errs = tucker(k, ranks, return_errors=True)
            n = len(errs)  # as many HOOI sweeps as tensorly's default run takes
            ta, (core, fs), tt_, tk = race(rep, partial(hosvd, k, ranks, n_iter=n), partial(tucker, k, ranks))
            ea, et = rel(tucker_to_tensor(core, fs), k), rel(tl.tucker_to_tensor(tk), k)
            rows.append((f"  HOOI x{n} vs tucker() {kind}", ta, tt_, ea, et))

    print(f"{'method':40s} {'adtn s':>8s} {'tensorly s':>10s} {'ratio':>6s} {'adtn err':>10s} {'tl err':>10s}")
    for name, ta, tt_, ea, et in rows:
        print(f"{name:40s} {ta:8.3f} {tt_:10.3f} {ta / tt_:6.3f} {ea:10.6f} {et:10.6f}")


if __name__ == "__main__":
    main()

"""Engine benchmarks: same-run ratios against hand-written opt_einsum and cotengra.

    python benchmarks/engine.py [--repeats N]

B-E1 dense() of a 4096x4096 TT-matrix (modes 8,8,8,8, rank 16) vs the same opt_einsum
     expression written by hand (goal: ratio <= 1.05).
B-E2 per-call overhead of dense() on a 3-node graph (goal: <= 50 us).
B-E3 plan time of a 24-leg depth-4 brick wall of 2x2x2x2 gates closed by [1,0] vectors
     (goal: <= 20 ms), and its FLOPs against cotengra's (goal: within 1.01x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import opt_einsum as oe
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adtn
from adtn.plan import clear_cache
from adtn.testing import brickwall, tt_chain


def best_of(fn, repeats: int, inner: int = 1) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def tt_matrix(modes=(8, 8, 8, 8), rank=16) -> adtn.TensorGraph:
    return tt_chain(modes, rank, name="tt4096")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []

    m = adtn.compile(tt_matrix())
    cores = [p.detach() for p in m.params.values()]
    expr = oe.contract_expression("aAm,mbBn,ncCp,pdD->abcdABCD", *[c.shape for c in cores])
    with torch.no_grad():
        t_adtn = best_of(lambda: m.dense(), args.repeats)
        t_oe = best_of(lambda: expr(*cores, backend="torch").reshape(4096, 4096), args.repeats)
    rows.append(("B-E1 TT 4096x4096 dense()", f"{t_adtn * 1e3:.1f} ms", f"{t_oe * 1e3:.1f} ms (opt_einsum)", t_adtn / t_oe, "<= 1.05"))

    g = adtn.TensorGraph("three")
    g.add_node("a", legs={"i": 4, "r": 3}).add_node("b", legs={"r": 3, "s": 3, "j": 5}).add_node("c", legs={"s": 3, "k": 2})
    g.bond("a.r", "b.r").bond("b.s", "c.s").set_outputs({"out": ["b.j", "c.k"], "in": ["a.i"]}).freeze()
    small = adtn.compile(g)
    a, b, c = [p.detach() for p in small.params.values()]
    with torch.no_grad():
        t_call = best_of(small.dense, args.repeats, inner=2000)
        t_raw = best_of(lambda: torch.einsum("ir,rsj,sk->jki", a, b, c), args.repeats, inner=2000)
    t_grad = best_of(small.dense, args.repeats, inner=2000)
    rows.append(("B-E2 3-node dense() per call (no grad)", f"{t_call * 1e6:.1f} us", f"{t_raw * 1e6:.1f} us (torch.einsum)", t_call / t_raw, "<= 50 us"))
    rows.append(("B-E2 3-node dense() per call (autograd)", f"{t_grad * 1e6:.1f} us", "", float("nan"), ""))

    wall = brickwall(24, 4)

    def plan_once():
        clear_cache()
        return adtn.plan(wall)

    def plan_greedy():
        clear_cache()
        return adtn.plan(wall, optimize="greedy")

    t_greedy = best_of(plan_greedy, args.repeats)
    greedy = plan_greedy().cost
    rows.append(("B-E3 brickwall Q=24 d=4 plan, greedy", f"{t_greedy * 1e3:.1f} ms", f"{greedy.flops:.4g} flops", float("nan"), "<= 20 ms"))
    t_plan = best_of(plan_once, args.repeats)
    cost = plan_once().cost
    rows.append(("B-E3 brickwall plan, auto", f"{t_plan * 1e3:.1f} ms", f"{cost.flops:.4g} ({cost.optimizer})", greedy.flops / cost.flops, "(flop gain)"))
    try:
        import cotengra  # noqa: F401

        ctg = adtn.plan(wall, optimize="cotengra").cost
        rows.append(("B-E3 brickwall FLOPs vs cotengra", f"{cost.flops:.4g}", f"{ctg.flops:.4g} (cotengra)", cost.flops / ctg.flops, "<= 1.01"))
    except ImportError:
        rows.append(("B-E3 brickwall FLOPs vs cotengra", f"{cost.flops:.4g}", "cotengra not installed", float("nan"), ""))

    print(f"{'benchmark':44s} {'adtn':>12s} {'baseline':>32s} {'ratio':>7s}  goal")
    for name, ours, base, ratio, goal in rows:
        print(f"{name:44s} {ours:>12s} {base:>32s} {ratio:7.3f}  {goal}")


if __name__ == "__main__":
    main()

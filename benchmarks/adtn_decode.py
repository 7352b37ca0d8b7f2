"""Deep ADTN decode benchmark: time and peak memory of dense() and of a layer, against nn.Linear.

    python benchmarks/adtn_decode.py                 # Q=20 (1024 x 1024), depth 1, 2
    python benchmarks/adtn_decode.py --full          # Q=24 (4096 x 4096), depth 1, 2, 4
    python benchmarks/adtn_decode.py --full --malloc both --executor planner --depths 1

Each configuration runs in its own subprocess (2 threads) so that its peak RSS
(``resource.getrusage`` maxrss) is its own: one process times, two more measure the peak of a
no-grad decode and of a decode forward+backward. Columns:

- decode fwd / fwd+bwd: ``dense()`` without autograd / with a backward of a random gradient;
- layer fwd+bwd: ``F.linear(x, dense())`` at ``--batch`` rows, forward and backward
  (at depth 1 also ``apply(x)``, which streams x through the gates without forming W; at
  depth >= 2 also ``apply_split(x)``, which applies the last operator's one-sided gates to x
  and to the product instead of the state, what ``TNLinear`` runs);
- nn.Linear: ``F.linear(x, W)`` with a dense W of the same shape, in the same process;
- ratio: the faster layer over nn.Linear (goals: depth 1 <= 0.8, depth 2 with ReLU <= 2.0);
- peak: maxrss minus the RSS before the module is built, in MB (a 2^Q float32 state is 4 * 2^Q bytes).

``--malloc tuned`` raises glibc's mmap threshold in the worker (``mallopt``): every fresh
64 MB tensor is otherwise mmapped and page-faulted anew, which costs about as much as the
pass over it (the fused executor keeps its states in ``adtn.plan.WORKSPACE`` buffers, so it
no longer depends on this much). ``both`` runs every configuration under each allocator setting.

``--device cuda`` times on the GPU (synchronised; peak = ``torch.cuda.max_memory_allocated``),
e.g. ``python benchmarks/adtn_decode.py --full --device cuda --depths 2`` for the decode time
of the 4096 x 4096 depth-2 ADTN (goal <= 1 ms on an H100).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeats: int, sync=None) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    if args.malloc == "tuned":
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve big blocks from the heap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: keep freed memory for reuse
    import torch
    import torch.nn.functional as F

    from adtn.templates.adtn import DeepTNModule, build

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    out_f, in_f = 2 ** (args.q // 2), 2 ** (args.q - args.q // 2)
    deep = build({"out": out_f, "in": in_f}, depth=args.depth, activation=args.activation)
    grad_w = torch.randn(out_f, in_f, device=device)
    before = rss_mb()  # the no-grad decode that sets the init scale counts towards a decode's peak
    start = time.perf_counter()
    module = DeepTNModule(deep, executor=args.executor, window=args.window, checkpoint=args.checkpoint,
                          device=device)
    result = {"build_s": time.perf_counter() - start, "params": deep.num_params, "executor": module.executor}

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else maxrss_mb() - before

    if args.mode == "mem_fwd":
        with torch.no_grad():
            module.dense()
        return {**result, "peak_mb": peak()}
    if args.mode == "mem_fwdbwd":
        module.dense().backward(grad_w)
        return {**result, "peak_mb": peak()}
    x = torch.randn(args.batch, in_f, requires_grad=True, device=device)
    grad_y = torch.randn(args.batch, out_f, device=device)
    weight = torch.randn(out_f, in_f, requires_grad=True, device=device)
    with torch.no_grad():
        result["fwd_ms"] = best_of(module.dense, args.repeats, sync)
    result["fwdbwd_ms"] = best_of(lambda: module.dense().backward(grad_w), args.repeats, sync)
    result["layer_dense_ms"] = best_of(lambda: F.linear(x, module.dense()).backward(grad_y), args.repeats, sync)
    if args.depth == 1:
        result["layer_apply_ms"] = best_of(lambda: module.apply(x).backward(grad_y), args.repeats, sync)
    elif module._split() is not None:
        result["layer_apply_ms"] = best_of(lambda: module.apply_split(x).backward(grad_y), args.repeats, sync)
    result["linear_ms"] = best_of(lambda: F.linear(x, weight).backward(grad_y), args.repeats, sync)
    return result


def run_worker(args: argparse.Namespace, depth: int, malloc: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--q", str(args.q), "--depth", str(depth),
           "--malloc", malloc, "--batch", str(args.batch), "--repeats", str(args.repeats), "--window",
           str(args.window), "--executor", args.executor, "--threads", str(args.threads),
           "--activation", str(args.activation), "--device", args.device] + (["--checkpoint"] if args.checkpoint else [])
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"worker failed ({' '.join(cmd[2:])}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="Q=24 (4096 x 4096) at depth 1, 2, 4")
    parser.add_argument("--q", type=int, default=None, help="legs (weight 2^(Q/2) x 2^(Q/2)); default 20, 24 with --full")
    parser.add_argument("--depths", default=None, help="comma-separated depths; default 1,2 (1,2,4 with --full)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=5, help="legs per fused window")
    parser.add_argument("--executor", default="auto", choices=["auto", "fused", "planner"])
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--activation", default="relu", type=lambda s: None if s == "None" else s)
    parser.add_argument("--malloc", default="default", choices=["default", "tuned", "both"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="time", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.q = args.q or (24 if args.full else 20)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    depths = [int(d) for d in (args.depths or ("1,2,4" if args.full else "1,2")).split(",")]
    mallocs = ["default", "tuned"] if args.malloc == "both" else [args.malloc]
    n = 2 ** (args.q // 2)
    print(f"deep ADTN decode, Q={args.q} ({n} x {2 ** args.q // n}), batch {args.batch}, {args.threads} threads, "
          f"window {args.window}, activation {args.activation}{', checkpoint' if args.checkpoint else ''}, "
          f"device {args.device} ('apply ms': apply at depth 1, apply_split deeper)")
    head = (f"{'depth':>5} {'malloc':>7} {'exec':>7} {'params':>6} {'fwd ms':>8} {'f+b ms':>8} {'layer ms':>9} "
            f"{'apply ms':>9} {'Linear ms':>9} {'ratio':>6} {'peak fwd MB':>11} {'peak f+b MB':>11}")
    print(head)
    for depth in depths:
        for malloc in mallocs:
            t = run_worker(args, depth, malloc, "time")
            fwd = run_worker(args, depth, malloc, "mem_fwd")["peak_mb"]
            fwdbwd = run_worker(args, depth, malloc, "mem_fwdbwd")["peak_mb"]
            apply = t.get("layer_apply_ms")
            ratio = min(t["layer_dense_ms"], apply or float("inf")) / t["linear_ms"]
            print(f"{depth:>5} {malloc:>7} {t['executor']:>7} {t['params']:>6} {t['fwd_ms']:>8.1f} "
                  f"{t['fwdbwd_ms']:>8.1f} {t['layer_dense_ms']:>9.1f} {apply or float('nan'):>9.1f} "
                  f"{t['linear_ms']:>9.1f} {ratio:>6.2f} {fwd:>11.0f} {fwdbwd:>11.0f}", flush=True)


if __name__ == "__main__":
    main()

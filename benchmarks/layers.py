"""Layer benchmarks: forward + backward time of TN layers against dense and tensorly-torch, same-run ratios.

    python benchmarks/layers.py [--repeats N] [--full]

B1 TT-Linear 4096x4096, modes (8,8,8,8), rank 16, batch 128 vs tltorch.FactorizedLinear
   (blocktt, the faster of implementation='factorized' / 'reconstructed'; goal <= 0.6) and
   vs nn.Linear.
B2 ADTN 4096x4096 depth 1 vs nn.Linear, batch 128 (goal <= 0.8).
B3 ADTN 4096x4096 depth 2 (ReLU) vs nn.Linear, batch 128 (goal <= 2.0).
   B2/B3 run only when the template "adtn" is registered; else "n/a".
B7 conv 64->64, 3x3, 32x32, batch 64 (--full; 16 otherwise) at >= 4x compression (budget
   0.25) vs nn.Conv2d (goal <= 0.6): Tucker-2, CP, Kronecker with the default split,
   with a channel-separable split A (64, 1, 3, 1), B (1, 64, 1, 3), and with A (64, 1, 3, 3),
   B (1, 64, 1, 1) (a 1x1 conv to R channels, then a 3x3 one); TT and HT in the shape search's
   SVD-like shape (kernel legs on the in core: a 3x3 conv to R channels, then a 1x1 one).
All float32, 2 threads, forward="auto" (the mode each layer picks is printed). ``--device cuda``
runs every case on the GPU (timings synchronise the device; B7 at batch 64).

Every case runs once per round, round-robin, so that a busy machine slows all alike. Two
ratios per case: of the best times ("best"), and the median over rounds of the ratio within
the round ("median"; steadier when the machine's load drifts). A goal counts as met on the
best ratio; the summary at the end lists each goal with both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import interleaved, machine

import adtn
from adtn.api import encode
from adtn.layers import TNConv2d, TNLinear
from adtn.plan import WORKSPACE


def step(layer: nn.Module, x: torch.Tensor):
    """One forward + backward (gradients of the parameters and of the input)."""
    x = x.clone().requires_grad_(True)

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    return run


def ratios(times: list[float], base: list[float]) -> tuple[float, float]:
    """(best / best of the base, median over rounds of time / the base's time in the same round)."""
    return min(times) / min(base), statistics.median(t / b for t, b in zip(times, base))


def params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters() if p.requires_grad)


def mode_of(layer: nn.Module, x: torch.Tensor) -> str:
    return layer.choose_forward(tuple(x.shape)).form if hasattr(layer, "choose_forward") else "-"


def linear_rows(rows: list, goals: list, repeats: int, device: str) -> None:
    import tltorch

    x = torch.randn(128, 4096, device=device)
    modes = (8, 8, 8, 8)
    cases = [("nn.Linear 4096x4096", nn.Linear(4096, 4096), "", "")]
    for impl in ("factorized", "reconstructed"):
        tl = tltorch.FactorizedLinear(modes, modes, factorization="blocktt", rank=16, implementation=impl)
        cases.append((f"tltorch blocktt r16 {impl}", tl, "", ""))
    cases.append(("B1 TT-Linear r16", TNLinear(4096, 4096, template="tt", rank=16, modes=(modes, modes)), "tltorch",
                  "<= 0.6"))
    missing = []
    for label, depth, goal in (("B2 ADTN depth 1", 1, "<= 0.8"), ("B3 ADTN depth 2 relu", 2, "<= 2.0")):
        if "adtn" in adtn.templates.names():
            cases.append((label, TNLinear(4096, 4096, template="adtn", depth=depth), "nn.Linear", goal))
        else:
            missing.append((label, "", "", "n/a", "template 'adtn' not registered", goal))
    times = interleaved([step(layer.to(device), x) for _, layer, _, _ in cases], repeats)
    which = 1 if min(times[1]) <= min(times[2]) else 2
    base = {"nn.Linear": times[0], "tltorch": times[which]}
    for (label, layer, against, goal), t in zip(cases, times):
        best, median = ratios(t, base["nn.Linear"])
        ratio = f"{best:.2f} (median {median:.2f}) vs nn.Linear"
        if against == "tltorch":
            best, median = ratios(t, base["tltorch"])
            impl = "factorized" if which == 1 else "reconstructed"
            ratio = f"{best:.2f} (median {median:.2f}) vs tltorch {impl}; " + ratio
        elif against:
            best, median = ratios(t, base[against])
        if goal:
            goals.append((label, goal, best, median))
        rows.append((label, f"{params(layer):,}", mode_of(layer, x), f"{min(t) * 1e3:.1f}", ratio, goal))
    rows.extend(missing)


def conv_rows(rows: list, goals: list, repeats: int, full: bool, device: str) -> None:
    batch = 64 if full or device != "cpu" else 16
    x = torch.randn(batch, 64, 32, 32, device=device)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    cases = [(f"nn.Conv2d 64->64 3x3, batch {batch}", conv, "")]
    for label, template, options in [
        ("B7 Tucker-2", "tucker2", {}),
        ("B7 CP", "cp", {}),
        ("B7 Kronecker, default split", "kronecker", {}),
        ("B7 Kronecker, A(64,1,3,1) B(1,64,1,3)", "kronecker", {"factors": ((64, 1, 3, 1), (1, 64, 1, 3))}),
        ("B7 Kronecker, A(64,1,3,3) B(1,64,1,1)", "kronecker", {"factors": ((64, 1, 3, 3), (1, 64, 1, 1))}),
        ("B7 TT, SVD-like shape (kernel_with=1)", "tt", {"modes": ((64, 1), (1, 64)), "kernel_with": 1}),
        ("B7 HT, SVD-like shape (kernel_with=1)", "ht", {"modes": ((64, 1), (1, 64)), "kernel_with": 1}),
    ]:
        layer = encode(conv, template, budget=0.25, init="random", **options)
        assert isinstance(layer, TNConv2d)
        cases.append((label, layer, "<= 0.6"))
    times = interleaved([step(layer.to(device), x) for _, layer, _ in cases], repeats)
    for (label, layer, goal), t in zip(cases, times):
        best, median = ratios(t, times[0])
        if goal:
            goals.append((f"{label} (batch {batch})", goal, best, median))
        rows.append((label, f"{params(layer):,}", mode_of(layer, x), f"{min(t) * 1e3:.1f}",
                     f"{best:.2f} (median {median:.2f}) vs nn.Conv2d", goal))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="B7 at batch 64 (default 16 to keep the run short)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    print(f"device: {machine(args.device)}")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows: list[tuple[str, ...]] = []
    goals: list[tuple[str, str, float, float]] = []
    linear_rows(rows, goals, args.repeats, args.device)
    conv_rows(rows, goals, args.repeats, args.full, args.device)
    head = ("case", "params", "forward", "ms (fwd+bwd)", "ratio", "goal")
    widths = [max(len(str(r[k])) for r in rows + [head]) for k in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if args.device == "cpu":
        print(f"\nworkspace: {WORKSPACE.nbytes / 2**20:.0f} MiB of reusable CPU buffers held (adtn.plan.WORKSPACE)")
    print("goals (best ratio, median ratio):")
    for label, goal, best, median in goals:
        bound = float(goal.split()[-1])
        print(f"  {label:<48} {goal:<7} best {best:.2f}, median {median:.2f}  "
              f"{'met' if best <= bound else 'NOT met'}")


if __name__ == "__main__":
    main()

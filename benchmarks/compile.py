"""torch.compile on compressed models: eager vs inductor, forward and forward + backward, same-run ratios.

    python benchmarks/compile.py [--repeats N] [--full] [--threads T]

Each model is compressed (budget 0.2, ``init="random"``: the values do not change the work) and
timed eagerly and under ``torch.compile(model, fullgraph=True)`` with the inductor backend, on
CPU: the inference forward (eval, no grad) and a training step's forward + backward (train
mode). Cases run round-robin, one call each per round (after the warm-up that compiles), so a
busy machine slows all alike; the ratio is compiled / eager of the best times, and the median
over rounds of the ratio within the round. The compile column is the first call's time (tracing
and code generation). Small default (a few seconds per model after compiling); ``--full`` runs
the paper-sized batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import interleaved

import adtn
from adtn.models import fc2, lenet5, resnet


def cases(full: bool) -> list[tuple[str, str, Callable[[], nn.Module], tuple[int, ...]]]:
    """(model, policy, make, input shape with the batch)."""
    batch = 128 if full else 32
    return [
        ("fc2", "tt", fc2, (batch, 784)),
        ("lenet5", "hybrid", lenet5, (batch, 1, 28, 28)),
        ("resnet20" if full else "resnet20 (width 8)", "tucker2", lambda: resnet(20, width=16 if full else 8),
         (batch // 2, 3, 32, 32)),
    ]


def forward_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)
    return run


def train_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
    return run


def first_call(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, policy: str, make: Callable[[], nn.Module], shape: tuple[int, ...],
            repeats: int) -> list[list[str]]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = adtn.compress(make(), policy, budget=0.2, init="random")
    x = torch.randn(shape)
    rows = []
    for mode, make_fn, train in (("forward", forward_fn, False), ("forward+backward", train_fn, True)):
        model.train(train)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        eager_fn, compiled_fn = make_fn(model, x), make_fn(compiled, x)
        eager_fn()
        compile_s = first_call(compiled_fn)
        eager, comp = interleaved([eager_fn, compiled_fn], repeats)
        best = min(comp) / min(eager)
        median = statistics.median(c / e for c, e in zip(comp, eager))
        rows.append([name, policy, f"{report.fraction:.2f}", mode, f"{min(eager) * 1e3:.2f}", f"{min(comp) * 1e3:.2f}",
                     f"{best:.2f}", f"{median:.2f}", f"{compile_s:.1f}"])
    return rows


def table(rows: list[list[str]]) -> str:
    head = ["model", "policy", "params", "pass", "eager ms", "compiled ms", "ratio best", "ratio median",
            "compile s"]
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
    lines = ["  ".join(c.ljust(w) if k < 4 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="batch 128 (64 images for resnet20 at width 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, 20 with --full)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (20 if args.full else 5)
    rows = []
    for name, policy, make, shape in cases(args.full):
        rows += measure(name, policy, make, shape, repeats)
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32, inductor, fullgraph=True; "
          f"params: the compressed layers' fraction of dense; ratio: compiled / eager ({repeats} rounds)")
    print(table(rows))


if __name__ == "__main__":
    main()

"""The ``adtn`` command line: ``demo``, ``info`` and ``draw``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .errors import AdtnError
from .graph import TensorGraph
from .module import compile

__all__ = ["main"]


def _demo_graph() -> TensorGraph:
    """A 4-core TT-matrix for a 256x256 weight (modes 4x4x4x4, rank 8), declared by hand."""
    g = TensorGraph("demo_tt")
    d, rank = 4, 8
    for k in range(d):
        legs = {"l": rank} if k else {}
        legs.update(o=4, i=4)
        if k < d - 1:
            legs["r"] = rank
        g.add_node(f"core{k}", legs=legs)
    for k in range(d - 1):
        g.bond(f"core{k}.r", f"core{k + 1}.l")
    g.set_outputs({"out": [f"core{k}.o" for k in range(d)], "in": [f"core{k}.i" for k in range(d)]})
    return g.freeze()


def demo(args: argparse.Namespace) -> int:
    """Declare, plan, draw and contract a network; compare with the dense layer it replaces."""
    with torch.no_grad():
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    graph = _demo_graph()
    print(f"declared: {graph}")
    module = compile(graph, std=256**-0.5)
    weight = module.dense()
    dense_params = weight.numel()
    print(f"dense weight: {tuple(weight.shape)}, {dense_params:,} entries; network: {graph.num_params:,} params "
          f"({dense_params / graph.num_params:.1f}x fewer)")
    x = torch.randn(args.batch, 256)
    for axis in ("in",):
        cost = module.cost(batch=args.batch, axis=axis)
        print(f"apply(x, axis={axis!r}) at batch {args.batch}: {cost}")
    print(f"dense(): {module.cost()}")
    module.apply(x, "in")  # the first call plans; later calls reuse the cached plan
    start = time.perf_counter()
    y = module.apply(x, "in")
    elapsed = time.perf_counter() - start
    ref = x @ weight.T
    rel = float((y - ref).norm() / ref.norm())
    print(f"streamed output {tuple(y.shape)} in {elapsed * 1e3:.2f} ms; relative difference to x @ W.T: {rel:.2e}")
    graph.to_json(out / "demo_tt.json", indent=1)
    try:
        graph.draw(out / "demo_tt.png")
        print(f"wrote {out / 'demo_tt.json'} and {out / 'demo_tt.png'}")
    except AdtnError as err:  # matplotlib missing
        print(f"wrote {out / 'demo_tt.json'}; drawing skipped: {err}")
    return 0 if rel < 1e-4 else 1


def info(args: argparse.Namespace) -> int:
    """Print a graph JSON's structure and the cost of contracting it."""
    graph = TensorGraph.load(args.file)
    print(graph)
    module = compile(graph)
    print(f"dense(): {module.cost()}")
    for axis in graph.outputs:
        print(f"apply(x, axis={axis!r}) at batch {args.batch}: {module.cost(batch=args.batch, axis=axis)}")
    return 0


def draw(args: argparse.Namespace) -> int:
    """Draw a graph JSON to an image file."""
    graph = TensorGraph.load(args.file)
    graph.draw(args.output, layout=args.layout)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adtn", description="Compress neural networks with tensor networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="declare, plan, draw and contract a small network")
    p.add_argument("--out", default="out", help="folder for the demo's JSON and PNG (default: out)")
    p.add_argument("--batch", type=int, default=128, help="batch size of the streamed input (default: 128)")
    p.set_defaults(func=demo)
    p = sub.add_parser("info", help="structure and contraction cost of a graph JSON")
    p.add_argument("file", help="a graph JSON file (e.g. graphs/tt_4096x4096_r16.json)")
    p.add_argument("--batch", type=int, default=128, help="batch size for apply costs (default: 128)")
    p.set_defaults(func=info)
    p = sub.add_parser("draw", help="draw a graph JSON to PNG/SVG/PDF")
    p.add_argument("file", help="a graph JSON file")
    p.add_argument("-o", "--output", default="graph.png", help="image path (default: graph.png)")
    p.add_argument("--layout", default="kamada_kawai", choices=["kamada_kawai", "spring", "circular", "line"])
    p.set_defaults(func=draw)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AdtnError as err:
        print(f"adtn {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

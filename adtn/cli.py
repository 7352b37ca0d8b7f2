"""The ``adtn`` command line: ``demo``, ``compress``, ``info`` and ``draw``.

    adtn demo                 # MNIST: train, compress, fine-tune LeNet-5 and FC-2 (demos/mnist_compress.py)
    adtn demo --graph-only    # declare, plan, draw and contract one small network

    adtn compress model.pt --policy hybrid --budget 0.1 -o out.pt --input-shape 8,3,32,32
    adtn compress torchvision.models:resnet18 --policy auto --budget 0.2 --skip conv1 fc -o r18.pt
    adtn info out.pt          # the table of a compressed model
    adtn info graph.json      # a graph's structure and contraction cost
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
import time
import zipfile
from pathlib import Path

import torch

from .compiler import compile
from .errors import AdtnError
from .graph import TensorGraph
from .structures import load_structure
from .templates.adtn import DeepTN
from .testing import tt_chain
from .version import __version__

__all__ = ["main"]


def _demo_graph() -> TensorGraph:
    """A 4-core TT-matrix for a 256x256 weight (modes 4x4x4x4, rank 8), declared node by node."""
    return tt_chain((4, 4, 4, 4), rank=8, name="demo_tt")


def demo(args: argparse.Namespace) -> int:
    """The MNIST demo (demos/mnist_compress.py); with --graph-only, the small graph demo."""
    if args.graph_only:
        with torch.no_grad():
            return _demo(args)
    module = _mnist_demo()
    module.run(args.out, quick=args.quick, full=args.full)
    return 0


def _mnist_demo():
    """Import ``demos/mnist_compress.py`` from the source checkout this package runs from."""
    path = Path(__file__).resolve().parent.parent / "demos" / "mnist_compress.py"
    if not path.is_file():
        raise AdtnError(f"demo: the MNIST demo ships with the source checkout (demos/mnist_compress.py), not found "
                        f"at {path}; run `adtn demo --graph-only` for the small graph demo")
    name = "adtn_demo_mnist_compress"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


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


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise AdtnError(f"--input-shape must be positive integers separated by commas, e.g. 8,3,32,32; got {text!r}")
    return shape


def _load_model(spec: str) -> torch.nn.Module:
    """A module from a ``torch.save`` / ``adtn.save`` file, or from ``package.module:factory`` (called with no arguments)."""
    path = Path(spec)
    if not path.exists() and ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as err:
            raise AdtnError(f"MODEL {spec!r}: cannot import {attr!r} from {mod_name!r}: {err}") from None
        if callable(factory) and not isinstance(factory, torch.nn.Module):
            try:
                model = factory()
            except Exception as err:  # noqa: BLE001 - any failure of user code, reported as such
                raise AdtnError(f"MODEL {spec!r}: calling {attr}() failed: {type(err).__name__}: {err}") from None
        else:
            model = factory
    elif not path.exists():
        raise AdtnError(f"MODEL {spec!r}: no such file, and not of the form package.module:factory")
    else:
        model = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(model, dict) and "format" in model:  # written by adtn.save
            from .api import load

            model = load(path, map_location="cpu")
    if not isinstance(model, torch.nn.Module):
        hint = " (a state_dict? pass package.module:factory instead)" if isinstance(model, dict) else ""
        raise AdtnError(f"MODEL {spec!r}: expected an nn.Module, got {type(model).__name__}{hint}")
    return model


def _option(text: str) -> tuple[str, object]:
    key, eq, value = text.partition("=")
    if not eq or not key.isidentifier():
        raise AdtnError(f"--option takes KEY=VALUE (e.g. rank=8, init=decompose, modes=((4,4),(8,8))), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare string


def compress_cmd(args: argparse.Namespace) -> int:
    """Compress a model's Linear / Conv layers and save it with adtn.save; print the report."""
    from .api import save
    from .compress import compress

    model = _load_model(args.model)
    shape = _shape(args.input_shape)
    calibration = None
    if args.calibration:
        calibration = torch.load(args.calibration, map_location="cpu", weights_only=False)
    elif shape is not None:
        calibration = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    options = dict(_option(o) for o in args.option)
    out, report = compress(model, args.policy, budget=args.budget, skip=tuple(args.skip), calibration=calibration,
                           inplace=True, **options)
    print(report.to_markdown() if args.markdown else report)
    save(out, args.output)
    print(f"wrote {args.output}")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print a compressed model's table, or a graph JSON's structure and the cost of contracting it."""
    if zipfile.is_zipfile(args.file):  # torch.save writes zip files
        from .report import Report

        model = _load_model(args.file)
        report = Report.from_model(model, _shape(args.input_shape))
        if not report.rows:
            print(f"{args.file}: {type(model).__name__} holds no TN layers")
            return 0
        print(report.to_markdown() if args.markdown else report)
        return 0
    structure = _structure(args.file, "a model file written by adtn.save / torch.save, or a graph JSON")
    print(structure)
    module = compile(structure)
    print(f"dense(): {module.cost()}")
    for axis in module.axes:
        print(f"apply(x, axis={axis!r}) at batch {args.batch}: {module.cost(batch=args.batch, axis=axis)}")
    return 0


def draw(args: argparse.Namespace) -> int:
    """Draw a graph JSON to an image file (a deep ADTN draws its layers side by side)."""
    structure = _structure(args.file, "a graph JSON (TensorGraph.to_json or DeepTN.to_json)")
    options = {} if args.layout is None else {"layout": args.layout}  # each kind has its own default
    structure.draw(args.output, **options)
    print(f"wrote {args.output}")
    return 0


def _structure(file: str, expected: str) -> TensorGraph | DeepTN:
    """The structure in a JSON file; a file that is not JSON text names what was expected instead."""
    path = Path(file)
    if path.is_file():
        with path.open("rb") as handle:
            head = handle.read(4096)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 4:  # not just a character cut at the end of the sample
                raise AdtnError(f"{file!r} is a binary file, not JSON text; expected {expected}") from None
    return load_structure(file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adtn", description="Compress neural networks with tensor networks.")
    parser.add_argument("--version", action="version", version=f"adtn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train, compress and fine-tune LeNet-5 and FC-2 on MNIST 5k (or --graph-only)",
                       description="Train LeNet-5 and FC-2 on MNIST 5k, compress them (ADTN on the linear layers, "
                                   "the hybrid and mixed policies), fine-tune, print the table and write PNGs "
                                   "(demos/mnist_compress.py). --graph-only: declare, plan, draw and contract one "
                                   "small network instead.")
    p.add_argument("--out", default="demo-output", help="folder for the table, JSON and PNGs (default: demo-output)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smoke test on a data subset (seconds)")
    size.add_argument("--full", action="store_true", help="longer training and a denser sweep")
    p.add_argument("--graph-only", action="store_true",
                   help="only the small graph demo: declare, plan, draw and contract a TT network")
    p.add_argument("--batch", type=int, default=128,
                   help="--graph-only: batch size of the streamed input (default: 128)")
    p.set_defaults(func=demo)
    p = sub.add_parser(
        "compress", help="compress a model's Linear / Conv layers with tensor networks",
        description="Replace every nn.Linear / nn.Conv1d / nn.Conv2d layer the policy selects by a TN layer "
                    "initialised from its weights (adtn.compress), print the per-layer report and save the model "
                    "with adtn.save (load it with adtn.load).")
    p.add_argument("model", metavar="MODEL",
                   help="a file written by torch.save(model) or adtn.save, or package.module:factory (called with "
                        "no arguments, e.g. torchvision.models:resnet18)")
    p.add_argument("--policy", default="hybrid",
                   help="a template name (tt, ht, tucker2, cp, kronecker, ...), hybrid (HT for linear, TT for conv), "
                        "mixed (Tucker-2 or CP per layer, whichever errs less) or auto (every fitting template, "
                        "the best kept) (default: hybrid)")
    p.add_argument("--budget", type=float, default=None,
                   help="parameter fraction of the compressed layers, in (0, 1], e.g. 0.1; without it give a size "
                        "with --option rank=N")
    p.add_argument("--skip", nargs="*", default=[], metavar="NAME",
                   help="layer names (or glob patterns) left dense, e.g. conv1 fc")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="the model's input shape: a random batch of it is the calibration batch (FLOPs at that size, "
                        "output errors, the mixed / auto choices)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="a tensor saved with torch.save used as the calibration batch (instead of --input-shape)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a template option for every layer, repeatable: rank=8, init=decompose, forward=dense, d=3")
    p.add_argument("-o", "--output", default="compressed.pt", help="where to save the model (default: compressed.pt)")
    p.add_argument("--markdown", action="store_true", help="print the report as a markdown table")
    p.set_defaults(func=compress_cmd)
    p = sub.add_parser("info", help="the report of a compressed model, or the cost of a graph JSON",
                       description="For a model saved by adtn.save (or adtn compress): its TN layers' table. For a "
                                   "graph JSON: its structure and contraction costs.")
    p.add_argument("file", help="a compressed model file (adtn.save) or a graph JSON file "
                                "(e.g. graphs/tt_4096x4096_r16.json)")
    p.add_argument("--batch", type=int, default=128, help="graph JSON: batch size for apply costs (default: 128)")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="model file: the input shape for FLOPs at that size (default: per output position / row)")
    p.add_argument("--markdown", action="store_true", help="model file: print the table as markdown")
    p.set_defaults(func=info)
    p = sub.add_parser("draw", help="draw a graph JSON to PNG/SVG/PDF")
    p.add_argument("file", help="a graph JSON file")
    p.add_argument("-o", "--output", default="graph.png", help="image path (default: graph.png)")
    p.add_argument("--layout", default=None, choices=["kamada_kawai", "spring", "circular", "line"],
                   help="node placement (default: kamada_kawai for a graph, spring for a deep ADTN's layers)")
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

"""Train LeNet-5 and FC-2 on MNIST 5k, compress them with adtn, fine-tune, and report what was measured.

    python demos/mnist_compress.py --out demo-output          # about 2-4 minutes on 2 CPU cores
    python demos/mnist_compress.py --quick                     # seconds: a smoke test on a data subset
    python demos/mnist_compress.py --full                      # longer training, a denser sweep
    adtn demo                                                  # the same (make demo)

For each model: train it dense (seeded), then

- **adtn**: every hidden ``nn.Linear`` becomes a deep ADTN (``adtn.encode(..., template="adtn",
  depth=3, init="random")``: gates at identity + noise, Qing et al., arXiv 2305.06058) and the whole model
  is fine-tuned, as the paper trains it: no fitting to the pretrained weight;
- **hybrid** / **mixed**: ``adtn.compress(model, policy, budget=0.1)`` (HT for linear + TT for
  conv; Tucker-2 or CP per layer), initialised from the trained weights, then fine-tuned with
  distillation from the dense model.

The first conv and the classifier stay dense in every method (the usual practice: the
classifier at 10x would need rank < 10 and caps the accuracy). The table reports accuracy of
the dense model, of the compressed model before fine-tuning and after it, whole-model parameter
counts, their ratio and the seconds (compression + fine-tuning) of each row. A sweep compresses
FC-2's first layer alone with several templates at a few budgets (and ADTN at a few depths),
fine-tunes each briefly and plots accuracy against that layer's compression ratio.

Files written to ``out_dir``: ``results.md`` and ``results.json`` (the table and the sweep),
``adtn_graph.png`` and ``adtn_circuit.png`` (the ADTN of FC-2's fc1: its operator
graphs as the engine draws them, and the same as a circuit), ``hybrid_graphs.png`` (LeNet-5's hybrid layers),
``accuracy_vs_compression.png``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import adtn
from adtn.data import Split, load_mnist5k
from adtn.draw import draw
from adtn.layers import TNLayer
from adtn.models import fc2, lenet5

__all__ = ["COLUMNS", "DEFAULT", "FULL", "QUICK", "Settings", "main", "run"]

MODELS = {"lenet5": lenet5, "fc2": fc2}
KEEP_DENSE = {"lenet5": ("conv1", "fc3"), "fc2": ("fc2",)}  # first conv and classifier
COLUMNS = ("model", "method", "acc_dense", "acc_compressed", "acc_finetuned", "params_dense", "params_compressed",
           "ratio", "seconds")


@dataclass(frozen=True)
class Settings:
    """How much to train: epochs per phase, data subset, and the sweep's points."""

    train: int | None  # training images used (None: all 4,000)
    test: int | None  # test images used (None: all 1,000)
    dense_epochs: int
    adtn_epochs: int
    adtn_depth: int
    finetune_epochs: int
    budget: float
    sweep_epochs: int
    sweep_templates: tuple[str, ...]
    sweep_budgets: tuple[float, ...]
    sweep_depths: tuple[int, ...]
    dense_lr: float = 2e-3
    adtn_lr: float = 5e-3
    finetune_lr: float = 5e-3
    batch: int = 128


DEFAULT = Settings(None, None, dense_epochs=15, adtn_epochs=30, adtn_depth=3, finetune_epochs=8, budget=0.1,
                   sweep_epochs=5, sweep_templates=("tt", "ht", "tucker2", "cp", "kronecker"),
                   sweep_budgets=(0.01, 0.03, 0.1), sweep_depths=(1, 2, 3))
QUICK = Settings(1000, 500, dense_epochs=2, adtn_epochs=1, adtn_depth=2, finetune_epochs=1, budget=0.1,
                 sweep_epochs=1, sweep_templates=("tt", "cp"), sweep_budgets=(0.05,), sweep_depths=(1,))
FULL = Settings(None, None, dense_epochs=20, adtn_epochs=30, adtn_depth=3, finetune_epochs=10, budget=0.1,
                sweep_epochs=8, sweep_templates=("tt", "tr", "ht", "tucker2", "cp", "kronecker"),
                sweep_budgets=(0.003, 0.01, 0.03, 0.1, 0.3), sweep_depths=(1, 2, 3))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _train(model: nn.Module, loaders: tuple, epochs: int, lr: float, teacher: nn.Module | None = None) -> float:
    """Fine-tune in place (seeded batch order) and return the final test accuracy."""
    torch.manual_seed(0)
    history = adtn.finetune(model, loaders[0], loaders[1], epochs=epochs, lr=lr, teacher=teacher, progress=False)
    return history[-1]["val_acc"]


def _row(model: str, method: str, dense_acc: float, before: float, after: float, dense: nn.Module,
         small: nn.Module, seconds: float) -> dict[str, Any]:
    p0, p1 = _params(dense), _params(small)
    row = dict(zip(COLUMNS, (model, method, dense_acc, before, after, p0, p1, p0 / p1, seconds)))
    print(f"  {method:<32} acc {before:.3f} -> {after:.3f} (dense {dense_acc:.3f}), params {p0:,} -> {p1:,} "
          f"({p0 / p1:.1f}x), {seconds:.1f} s", flush=True)
    return row


def _adtn_model(dense: nn.Module, names: list[str], depth: int) -> nn.Module:
    """A copy of ``dense`` whose ``names`` linear layers are random-init deep ADTNs."""
    model = copy.deepcopy(dense)
    torch.manual_seed(1)
    for name in names:
        setattr(model, name, adtn.encode(getattr(model, name), "adtn", depth=depth, init="random"))
    return model


def _models(split: Split, loaders: tuple, s: Settings, out: Path) -> tuple[list[dict], dict[str, nn.Module]]:
    rows, kept = [], {}
    calibration = split.train_x[:256]
    for name, factory in MODELS.items():
        print(f"{name}:", flush=True)
        torch.manual_seed(0)
        dense = factory()
        start = time.perf_counter()
        acc = _train(dense, loaders, s.dense_epochs, s.dense_lr)
        rows.append(_row(name, f"dense ({s.dense_epochs} ep)", acc, acc, acc, dense, dense,
                         time.perf_counter() - start))
        kept[name] = dense
        keep = KEEP_DENSE[name]
        linear = [n for n, m in dense.named_children() if isinstance(m, nn.Linear) and n not in keep]

        start = time.perf_counter()
        model = _adtn_model(dense, linear, s.adtn_depth)
        before = adtn.evaluate(model, loaders[1])[1]
        after = _train(model, loaders, s.adtn_epochs, s.adtn_lr)
        rows.append(_row(name, f"adtn depth {s.adtn_depth} on {'+'.join(linear)} ({s.adtn_epochs} ep)", acc,
                         before, after, dense, model, time.perf_counter() - start))
        if name == "fc2":
            model.fc1.structure.draw(out / "adtn_graph.png")
            _draw_circuit(model.fc1.structure, out / "adtn_circuit.png", "FC-2's fc1 (256 x 784)")

        for policy in ("hybrid", "mixed"):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, report = adtn.compress(dense, policy, budget=s.budget, skip=keep, calibration=calibration)
            before = adtn.evaluate(model, loaders[1])[1]
            after = _train(model, loaders, s.finetune_epochs, s.finetune_lr, teacher=dense)
            layers = ", ".join(f"{r.name}:{r.template}" for r in report.rows)
            rows.append(_row(name, f"{policy} {s.budget:g} ({layers}; {s.finetune_epochs} ep)", acc, before,
                             after, dense, model, time.perf_counter() - start))
            if name == "lenet5" and policy == "hybrid":
                _draw_layers(model, out / "hybrid_graphs.png", f"LeNet-5, hybrid policy, budget {s.budget:g}")
    return rows, kept


def _draw_layers(model: nn.Module, path: Path, title: str) -> None:
    """One panel per TN layer of ``model``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, TNLayer)]
    cols = min(3, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(6 * cols, 5 * rows), squeeze=False)
    for ax, (name, layer) in zip(axs.flat, layers):
        graph = layer.structure
        draw(graph, ax=ax, title=f"{name}: {layer.template}, {graph.num_params:,} params")
    for ax in list(axs.flat)[len(layers):]:
        ax.set_axis_off()
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _draw_circuit(deep: Any, path: Path, what: str) -> None:
    """The same ADTN drawn as a circuit: one wire per leg, gates as boxes, the activation between layers."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    q = deep.q
    fig, ax = plt.subplots(figsize=(12, 0.35 * q + 1.5))
    last = [0] * q  # the last column used on each leg
    x0 = 0
    for m, op in enumerate(deep.operators):
        for node in op.nodes_with_role("param"):
            a, b = op.node(node)["on"]
            col = max(last[a], last[b]) + 1
            last[a] = last[b] = col
            boundary = set(op.legs(node)) == {"o0", "o1"}
            ax.add_patch(Rectangle((x0 + col - 0.35, a - 0.3), 0.7, b - a + 0.6, zorder=2,
                                   color="#A1C9F4" if boundary else "#4C72B0"))
        x0 += max(last) + 1
        last = [0] * q
        if m < deep.depth - 1:
            ax.axvline(x0, color="#C44E52", ls="--", lw=1)
            ax.text(x0, -1.2, deep.activation or "linear", color="#C44E52", ha="center", fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "none"})
    for leg in range(q):
        ax.plot([-0.5, x0 + 0.5], [leg, leg], color="#333333", lw=0.8, zorder=1)
        ax.text(-0.7, leg, "[1,0]", ha="right", va="center", fontsize=7)
    ax.text(x0 + 0.8, (q - 1) / 2, f"2^{q} entries,\ncropped to\n{deep.size:,}", va="center", fontsize=8)
    ax.set_xlim(-2.5, x0 + 4)
    ax.set_ylim(q, -2)
    ax.set_axis_off()
    ax.set_title(f"ADTN of {what}: {q} legs, depth {deep.depth}, {deep.num_params:,} parameters "
                 "(light: gates on the boundary, 4 effective entries each)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _sweep(dense: nn.Module, loaders: tuple, s: Settings) -> list[dict[str, Any]]:
    """FC-2's fc1 alone compressed per template and size, each fine-tuned ``sweep_epochs``."""
    points = []
    base = dense.fc1.weight.numel()
    fixed = {"init": "auto", "shape": "default"}  # each template in its textbook shape
    runs = [(t, {"budget": b, **fixed}, s.finetune_lr) for t in s.sweep_templates for b in s.sweep_budgets]
    runs += [("adtn", {"depth": d, "init": "random"}, s.adtn_lr) for d in s.sweep_depths]
    for template, options, lr in runs:
        start = time.perf_counter()
        model = copy.deepcopy(dense)
        torch.manual_seed(1)
        model.fc1 = adtn.encode(dense.fc1, template, **options)
        before = adtn.evaluate(model, loaders[1])[1]
        after = _train(model, loaders, s.sweep_epochs, lr)
        size = model.fc1.num_tn_params
        point = {"template": template, **{k: v for k, v in options.items() if k != "init"}, "params": size,
                 "ratio": base / size, "acc_compressed": before, "acc_finetuned": after,
                 "seconds": time.perf_counter() - start}
        print(f"  fc1 {template:<9} {size:>7,} params ({base / size:6.1f}x): {before:.3f} -> {after:.3f}", flush=True)
        points.append(point)
    return points


def _plot(points: list[dict[str, Any]], dense_acc: float, path: Path, epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for template in dict.fromkeys(p["template"] for p in points):
        mine = sorted((p for p in points if p["template"] == template), key=lambda p: p["ratio"])
        ax.plot([p["ratio"] for p in mine], [p["acc_finetuned"] for p in mine], "o-", label=template)
    ax.axhline(dense_acc, color="grey", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression of fc1 (784x256): dense / TN parameters")
    ax.set_ylabel(f"test accuracy after {epochs} epoch(s)")
    ax.set_title("FC-2 on MNIST 5k: accuracy vs compression per template")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown."""
    head = ["model", "method", "acc dense", "acc compressed", "acc fine-tuned", "params dense", "params compressed",
            "ratio", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["method"], f"{r['acc_dense']:.3f}", f"{r['acc_compressed']:.3f}",
                 f"{r['acc_finetuned']:.3f}", f"{r['params_dense']:,}", f"{r['params_compressed']:,}",
                 f"{r['ratio']:.1f}x", f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(out_dir: str | Path = "demo-output", quick: bool = False, full: bool = False) -> list[dict[str, Any]]:
    """Run the demo; write the table, the sweep and the PNGs to ``out_dir``; return the table's rows."""
    s = QUICK if quick else FULL if full else DEFAULT
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    split = load_mnist5k().subset(s.train, s.test)
    loaders = split.loaders(s.batch, shuffle_seed=0, test_batch_size=1000)
    print(f"data: {split}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows, dense = _models(split, loaders, s, out)
    print("sweep: FC-2's fc1 per template", flush=True)
    points = _sweep(dense["fc2"], loaders, s)
    _plot(points, rows[[r["model"] for r in rows].index("fc2")]["acc_dense"], out / "accuracy_vs_compression.png",
          s.sweep_epochs)
    total = time.perf_counter() - start
    table = markdown(rows)
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    (out / "results.md").write_text(f"{table}\n\nTotal {total:.0f} s on {machine}"
                                    f"{' (quick)' if quick else ' (full)' if full else ''}.\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "sweep": points, "seconds": total,
                                                  "settings": dataclasses.asdict(s), "machine": machine}, indent=1))
    print()
    print(table)
    print(f"\ntotal {total:.1f} s; wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    return rows


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description="Compress LeNet-5 and FC-2 on MNIST 5k with adtn.")
    parser.add_argument("--out", default="demo-output", help="folder for the table and PNGs (default: demo-output)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smoke test on 1,000 images, 1-2 epochs (seconds)")
    size.add_argument("--full", action="store_true", help="longer training and a denser sweep (~10+ minutes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(args.out, quick=args.quick, full=args.full)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

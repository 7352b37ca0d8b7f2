"""Reproduce the ADTN paper's numbers that fit a CPU (Qing et al., arXiv 2305.06058).

(a) The VGG-16 CIFAR-10 classifier configuration: the ``adtn`` template at depth 1 on the
    512 -> 4096 and 4096 -> 4096 layers, built (not trained) and counted: 200 + 224 = 424.
(b) FC-2 on MNIST 5k: train dense, replace ``fc1`` (784 -> 256, padded to 2^18) by a deep
    ADTN from random gates (depth 1, 2, 3 with ReLU; depth 3 with ``activation=None``, the
    linear ablation) and fine-tune the whole model; report test accuracy, fc1's parameters
    and its compression 784*256 / params beside the numbers measured with a naive ADTN.
    Then the recipes that aim at the goal "fc1 at >= 100x within 1 point of dense": the same
    training distilled from the dense FC-2 (T = 4, alpha = 0.9) at depth 3, and distilled at
    depth 5 with the staircase layout and lr 1e-2 (1,348 gate parameters, 149x), each over
    three seeds (mean ± std), since one seed misleads.

    python benchmarks/repro_adtn.py                 # about 4 minutes on 2 idle CPU cores (20+ when shared)
    python benchmarks/repro_adtn.py --full          # 60 epochs, three seeds for every row
    python benchmarks/repro_adtn.py --out docs/results.md --threads 2

The table is printed and written as the section ``## ADTN`` of ``--out`` (other sections kept).
"""

from __future__ import annotations

import copy
import datetime
import statistics
import time

import torch
from _results import machine, parse, repro_parser, write_section
from torch import nn

import adtn
from adtn.data import load_mnist5k
from adtn.models import fc2
from adtn.templates import get

HEADING = "## ADTN (Qing et al., arXiv 2305.06058)"
VGG_LAYERS = (("512 -> 4096", {"out": 4096, "in": 512}, 200), ("4096 -> 4096", {"out": 4096, "in": 4096}, 224))
# (depth, activation, reference accuracy and gate-parameter count of an earlier naive implementation)
VARIANTS = ((1, "relu", 0.705, 272), (2, "relu", 0.866, 544), (3, "relu", 0.905, 816), (3, None, 0.872, 816))
# recipes aimed at the goal, distilled from the dense model, each over GOAL_SEEDS: (depth, template options, lr)
RECIPES = ((3, {}, 5e-3), (5, {"layout": "staircase"}, 1e-2))
GOAL_SEEDS = (0, 1, 2)
DENSE_PAPER = 0.944
FC1 = 784 * 256


def vgg_count() -> list[str]:
    """Build both classifier layers at depth 1 and count their parameters."""
    lines = ["| layer | Q | params (ours, built) | closed form | paper-derived |", "|---|---|---|---|---|"]
    total = 0
    for name, axes, expected in VGG_LAYERS:
        tn = get("adtn").build(axes, depth=1)
        built = tn.num_params
        formula = get("adtn").formula(axes, depth=1)
        q = (axes["out"] * axes["in"] - 1).bit_length()
        total += built
        lines.append(f"| {name} | {q} | {built} | {formula} | {expected} |")
    lines.append(f"| **total** | | **{total}** | | **424** |")
    return lines


def gate_params(layer: nn.Module) -> int:
    """Trainable parameters of a TN layer, bias excluded."""
    return sum(p.numel() for n, p in layer.named_parameters() if not n.endswith("bias"))


def fc2_runs(dense_epochs: int, epochs: int, seeds: tuple[int, ...], lr: float) -> tuple[list[str], float]:
    """Dense FC-2, then each ADTN variant on fc1, fine-tuned end to end; a markdown table."""
    split = load_mnist5k()
    loaders = split.loaders(128, shuffle_seed=0, test_batch_size=1000)
    torch.manual_seed(0)
    dense = fc2()
    start = time.perf_counter()
    dense_acc = adtn.finetune(dense, *loaders, epochs=dense_epochs, lr=2e-3, progress=False)[-1]["val_acc"]
    print(f"dense FC-2 ({dense_epochs} ep): {dense_acc:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    lines = [
        "| fc1 | epochs | test acc (ours) | reference | gap | fc1 gate params | fc1 compression | seconds |",
        "|---|---|---|---|---|---|---|---|",
        (f"| dense 784x256 | {dense_epochs} | {dense_acc:.3f} | {DENSE_PAPER:.3f} | {dense_acc - DENSE_PAPER:+.3f} "
        f"| {FC1:,} | 1x | |"),
    ]
    runs = [(d, a, {}, lr, False, f"{ref:.3f} ({naive} params)", ref, seeds) for d, a, ref, naive in VARIANTS]
    runs += [(d, "relu", opts, rlr, True, "", None, GOAL_SEEDS) for d, opts, rlr in RECIPES]
    for depth, act, opts, run_lr, distil, paper, ref, run_seeds in runs:
        accs, start = [], time.perf_counter()
        for seed in run_seeds:
            model = copy.deepcopy(dense)
            torch.manual_seed(seed + 1)
            model.fc1 = adtn.encode(model.fc1, "adtn", depth=depth, init="random", activation=act, **opts)
            torch.manual_seed(seed)
            teacher = dense if distil else None
            history = adtn.finetune(model, *loaders, epochs=epochs, lr=run_lr, teacher=teacher, progress=False)
            accs.append(history[-1]["val_acc"])
        n = gate_params(model.fc1)
        acc = statistics.mean(accs)
        spread = f" ± {statistics.stdev(accs):.3f}" if len(accs) > 1 else ""
        name = f"ADTN depth {depth}, {act or 'linear (no activation)'}"
        name += "".join(f", {v}" for v in opts.values()) + (", distilled" if distil else "")
        name += f", lr {run_lr:g}" if run_lr != lr else ""
        if len(run_seeds) != len(seeds):
            name += f" ({len(run_seeds)} seeds: {', '.join(f'{a:.3f}' for a in accs)})"
        sec = time.perf_counter() - start
        gap = "" if ref is None else f"{acc - ref:+.3f}"
        print(f"{name}: {acc:.3f}{spread} (ref {paper or '-'}), {n} params, {FC1 / n:.0f}x, {sec:.0f} s", flush=True)
        lines.append(f"| {name} | {epochs} | {acc:.3f}{spread} | {paper} | {gap} | {n} | {FC1 / n:,.0f}x | {sec:.0f} |")
    return lines, dense_acc


def main(argv: list[str] | None = None) -> None:
    parser = repro_parser(__doc__, "60 epochs, three seeds for every row, mean ± std")
    parser.add_argument("--epochs", type=int, default=None, help="ADTN fine-tuning epochs (default 30; --full 60)")
    args = parse(parser, argv)
    dense_epochs, epochs, seeds = (15, 60, (0, 1, 2)) if args.full else (15, 30, (0,))
    epochs = args.epochs or epochs
    start = time.perf_counter()
    vgg = vgg_count()
    print("\n".join(vgg), flush=True)
    rows, dense_acc = fc2_runs(dense_epochs, epochs, seeds, lr=5e-3)
    print("\n".join(rows))
    body = [
        (f"{datetime.date.today()}, {machine()}, `python benchmarks/repro_adtn.py{' --full' if args.full else ''}` "
        f"({time.perf_counter() - start:.0f} s). Seeds: {list(seeds)} (the distilled rows: {list(GOAL_SEEDS)}; a "
        "seed sets the gates' init, the batch order is fixed); Adam, cosine schedule, lr 5e-3, batch 128; "
        "MNIST 5k (4000 train / 1000 test); gates from identity + noise (`init=\"random\"`), no fit to the "
        "dense weight. \"distilled\": the same fine-tuning with `teacher=` the dense FC-2 (Hinton's loss, "
        "T = 4, alpha = 0.9), as the demo's hybrid / mixed rows are trained; \"staircase\": `layout=\"staircase\"` "
        "(gates on legs (0,1),(1,2),... instead of the brick-wall's two columns)."),
        "",
        "**(a) VGG-16 CIFAR-10 classifier, depth 1 (build only).**",
        "",
        *vgg,
        "",
        ("**(b) FC-2 on MNIST 5k, fc1 (784 -> 256, padded to 2^18) as ADTN, whole model fine-tuned.** "
        "Reference accuracies are those of an earlier, naive ADTN implementation (same data, 30 epochs); its parameter "
        "counts treat every gate as 16 numbers, ours store the 4 effective entries of boundary gates "
        "(bias, 256, excluded from both)."),
        "",
        *rows,
        "",
        _verdict(rows, dense_acc),
    ]
    write_section(args.out, HEADING, "\n".join(body))
    print(f"wrote section {HEADING!r} of {args.out}")


def _verdict(rows: list[str], dense_acc: float) -> str:
    """One honest sentence: does any >= 100x variant reach within 1 point of dense?"""
    ok = []
    for row in rows[3:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        acc = float(cells[2].split()[0])
        ratio = float(cells[6].rstrip("x").replace(",", ""))
        if ratio >= 100 and acc >= round(dense_acc - 0.01, 3) - 1e-9:
            ok.append(f"{cells[0]} ({acc:.3f}, {ratio:,.0f}x)")
    if ok:
        return f"Goal (>= 100x on fc1 within 1 point of dense {dense_acc:.3f}) met by: {'; '.join(ok)}."
    return (f"Goal (>= 100x on fc1 within 1 point of dense {dense_acc:.3f}) **not met** at these settings: "
            "every >= 100x variant is more than 1 point below dense.")


if __name__ == "__main__":
    main()

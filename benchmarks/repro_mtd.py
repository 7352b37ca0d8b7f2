"""Reproduce MTD's per-layer Tucker-2 / CP choice on a small VGG-style CNN (Liang and Lee, IPDPSW 2021).

A VGG-style net (conv 1->16, 16->32, pool, 32->64, 64->64, pool, 2x2 average pool, linear
256 -> 10; 3x3 convs with ReLU) is trained dense, then its conv2..conv4 kernels are compressed
at the same budget (a fraction of those kernels' weights; conv1 and the classifier stay dense)
with ``adtn.compress`` under three policies:

- ``mixed``: per layer Tucker-2 or CP, whichever gives the lower output error on 256
  calibration images (MTD's automatic choice);
- ``tucker2``: Tucker-2 everywhere;
- ``cp``: CP everywhere.

Each compressed model is then fine-tuned with distillation from the dense model (as
``demos/mnist_compress.py`` does: T = 4, alpha = 0.9). The table gives, per budget and policy,
the template and rank chosen per layer, the parameters, the ratios, the accuracy right after
compression and after fine-tuning, and the seconds.

    python benchmarks/repro_mtd.py                 # sklearn's 8x8 digits, about 1-2 minutes on 2 CPU cores
    python benchmarks/repro_mtd.py --full          # MNIST 5k at 28x28, longer training (about 6 minutes)
    python benchmarks/repro_mtd.py --smoke         # seconds: a tiny subset, one epoch (tests)
    python benchmarks/repro_mtd.py --out docs/results.md --threads 2

The table is printed and written as the section ``## MTD`` of ``--out`` (other sections kept).
"""

from __future__ import annotations

import datetime
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
from _results import machine, parse, repro_parser, run_flags, write_section
from torch import nn

import adtn
from adtn.data import load_digits, load_mnist5k

HEADING = "## MTD: mixed Tucker-2 / CP (Liang and Lee, IPDPSW 2021)"
POLICIES = ("mixed", "tucker2", "cp")
KEEP_DENSE = ("conv1", "fc")
COMPRESSED = ("conv2", "conv3", "conv4")
PAPER = "VGG-11 32x and VGG-16 37x at < 1 point accuracy drop on CIFAR-10"


@dataclass(frozen=True)
class Settings:
    """Data, epochs and budgets of one run."""

    data: str  # "digits" or "mnist5k"
    dense_epochs: int
    finetune_epochs: int
    budgets: tuple[float, ...]
    train: int | None = None  # a seeded subset of the training images (None: all)
    test: int | None = None
    dense_lr: float = 2e-3
    finetune_lr: float = 2e-3
    batch: int = 64


DEFAULT = Settings("digits", dense_epochs=20, finetune_epochs=10, budgets=(0.1, 0.05, 0.03))
FULL = Settings("mnist5k", dense_epochs=15, finetune_epochs=8, budgets=(0.1, 0.05, 0.03), batch=128)
SMOKE = Settings("digits", dense_epochs=1, finetune_epochs=1, budgets=(0.1,), train=256, test=128)


def vgg_small(in_channels: int = 1, classes: int = 10,
              widths: tuple[int, int, int, int] = (16, 32, 64, 64)) -> nn.Sequential:
    """conv 1->16, 16->32, pool, 32->64, 64->64, pool (3x3, padding 1, ReLU), 2x2 average pool, linear -> classes."""
    a, b, c, d = widths
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, a, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(a, b, 3, padding=1)), ("relu2", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(b, c, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(c, d, 3, padding=1)), ("relu4", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("gap", nn.AdaptiveAvgPool2d(2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * d, classes)),
    ]))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_weights(model: nn.Module) -> int:
    """Weight parameters of conv2..conv4, dense or compressed (biases excluded)."""
    total = 0
    for name in COMPRESSED:
        layer = model.get_submodule(name)
        total += layer.num_tn_params if hasattr(layer, "num_tn_params") else layer.weight.numel()
    return total


def _train(model: nn.Module, loaders: tuple, epochs: int, lr: float, teacher: nn.Module | None = None) -> float:
    """Train in place with a seeded batch order; the final test accuracy."""
    torch.manual_seed(0)
    history = adtn.finetune(model, *loaders, epochs=epochs, lr=lr, teacher=teacher, progress=False)
    return history[-1]["val_acc"]


def _layers(report: adtn.Report) -> str:
    """``conv2: cp R=12, conv3: tucker2 rank 9``: the template and size of each compressed layer."""
    parts = []
    for row in report.rows:
        rank = row.options.get("rank")
        if isinstance(rank, (list, tuple)):
            size = "(" + ", ".join(str(r) for r in rank) + ")"
        elif isinstance(rank, dict):
            size = "(" + ", ".join(str(r) for r in rank.values()) + ")"
        else:
            size = f"R={rank}" if row.template == "cp" else f"rank {rank}"
        parts.append(f"{row.name}: {row.template} {size}")
    return ", ".join(parts)


def run(s: Settings) -> tuple[list[str], list[dict], float, int]:
    """Train dense, compress per budget and policy, distil: table lines, results, dense accuracy, test size."""
    split = (load_digits() if s.data == "digits" else load_mnist5k()).subset(s.train, s.test)
    loaders = split.loaders(s.batch, shuffle_seed=0, test_batch_size=1000)
    calibration = split.train_x[:256]
    torch.manual_seed(0)
    dense = vgg_small(split.input_shape[0], split.num_classes)
    start = time.perf_counter()
    dense_acc = _train(dense, loaders, s.dense_epochs, s.dense_lr)
    dense_sec = time.perf_counter() - start
    p0, c0 = _params(dense), _conv_weights(dense)
    print(f"dense ({s.dense_epochs} ep): {dense_acc:.3f}, {p0:,} params, conv2-4 {c0:,} ({dense_sec:.0f} s)",
          flush=True)
    lines = [
        ("| budget | policy | layers (template, ranks) | conv2-4 params (ratio) | model params (ratio) "
         "| acc compressed | acc fine-tuned | drop vs dense | seconds |"),
        "|---|---|---|---|---|---|---|---|---|",
        (f"| | dense ({s.dense_epochs} ep) | | {c0:,} (1x) | {p0:,} (1x) | {dense_acc:.3f} | {dense_acc:.3f} | | "
         f"{dense_sec:.0f} |"),
    ]
    results = []
    for budget in s.budgets:
        for policy in POLICIES:
            start = time.perf_counter()
            torch.manual_seed(0)  # CP's ALS starts from random factors
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, report = adtn.compress(dense, policy, budget=budget, skip=KEEP_DENSE, calibration=calibration)
            before = adtn.evaluate(model, loaders[1])[1]
            after = _train(model, loaders, s.finetune_epochs, s.finetune_lr, teacher=dense)
            sec = time.perf_counter() - start
            p1, c1 = _params(model), _conv_weights(model)
            layers = _layers(report)
            picked = [(r.name, r.template, dict(r.candidates)) for r in report.rows]
            results.append({"budget": budget, "policy": policy, "before": before, "after": after, "params": p1,
                            "conv": c1, "dense_conv": c0, "choices": picked})
            print(f"{budget:g} {policy:<8} {layers}: {before:.3f} -> {after:.3f}, conv2-4 {c1:,} ({c0 / c1:.1f}x), "
                  f"model {p1:,} ({p0 / p1:.1f}x), {sec:.0f} s", flush=True)
            lines.append(f"| {budget:g} | {policy} | {layers} | {c1:,} ({c0 / c1:.1f}x) | {p1:,} ({p0 / p1:.1f}x) "
                         f"| {before:.3f} | {after:.3f} | {after - dense_acc:+.3f} | {sec:.0f} |")
    return lines, results, dense_acc, len(split.test_y)


def choices(results: list[dict]) -> list[str]:
    """The table of mixed's choices: each layer's calibration output error per candidate."""
    lines = ["| budget | layer | Tucker-2 output error | CP output error | mixed keeps |", "|---|---|---|---|---|"]
    for r in results:
        if r["policy"] != "mixed":
            continue
        for name, template, tried in r["choices"]:
            t2, cp = (f"{tried[t]:.3f}" if t in tried else "" for t in ("tucker2", "cp"))
            lines.append(f"| {r['budget']:g} | {name} | {t2} | {cp} | {template} |")
    return lines


def reading(results: list[dict], dense_acc: float, n_test: int) -> str:
    """Per budget: does mixed beat, match or trail the better single-template policy?"""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in results):
        by = {r["policy"]: r for r in results if r["budget"] == budget}
        if not all(p in by for p in POLICIES):
            continue
        best = max(("tucker2", "cp"), key=lambda p: by[p]["after"])
        worst = "cp" if best == "tucker2" else "tucker2"
        m, b, w = by["mixed"]["after"], by[best]["after"], by[worst]["after"]
        if m > b:
            verdict = f"beats both (the better single one, {best}, {b:.3f})"
        elif m == b:
            verdict = f"matches the better single one ({best}, {b:.3f})"
        elif m == w:
            verdict = f"matches {worst} ({w:.3f}), below {best} ({b:.3f})"
        elif m > w:
            verdict = f"lands between {best} ({b:.3f}) and {worst} ({w:.3f})"
        else:
            verdict = f"trails both ({best} {b:.3f}, {worst} {w:.3f})"
        kept = {t for _, t, _ in by["mixed"]["choices"]}
        if len(kept) == 1:
            verdict += f" (it kept {next(iter(kept))} on every layer)"
        out.append(f"at {budget:g}, mixed ({m:.3f}, {m - dense_acc:+.3f} vs dense; "
                   f"{by['mixed']['before']:.3f} before fine-tuning) {verdict}")
    text = "; ".join(out) + "." if out else ""
    ok = [r for r in results if r["after"] >= dense_acc - 0.01]
    if ok:
        best = max(ok, key=lambda r: (r["dense_conv"] / r["conv"], r["after"]))
        ratio = best["dense_conv"] / best["conv"]
        text += (f" The highest conv2-4 compression within 1 point of dense is {ratio:.1f}x "
                 f"({best['policy']} at {best['budget']:g}, {best['after']:.3f}).")
    elif results:
        text += " No setting stays within 1 point of dense."
    return text + (f" One test image is {1 / n_test:.3f} of accuracy, and one seed was run: gaps of a few images "
                   "are noise.")


def main(argv: list[str] | None = None) -> None:
    parser = repro_parser(__doc__, "MNIST 5k at 28x28, longer training (about 6 minutes)",
                          "a tiny subset, one epoch each (seconds; for tests)")
    args = parse(parser, argv)
    s = SMOKE if args.smoke else FULL if args.full else DEFAULT
    start = time.perf_counter()
    lines, results, dense_acc, n_test = run(s)
    print("\n".join(lines))
    flag = run_flags(args)
    data = ("sklearn's 8x8 digits (1,437 train / 360 test)" if s.data == "digits"
            else "MNIST 5k at 28x28 (4,000 train / 1,000 test)")
    if s.train is not None:
        data += f", a seeded subset of {s.train} train / {s.test} test images"
    body = "\n".join([
        (f"{datetime.date.today()}, {machine()}, `python benchmarks/repro_mtd.py{flag}` "
         f"({time.perf_counter() - start:.0f} s). Data: {data}. Model: VGG-style CNN (conv 1->16, 16->32, pool, "
         "32->64, 64->64, pool, 2x2 average pool, linear 256 -> 10). Dense: "
         f"{s.dense_epochs} epochs, Adam lr {s.dense_lr:g}, cosine, batch {s.batch}. Compressed: conv2, conv3, "
         "conv4 by `adtn.compress(dense, policy, budget=b, skip=(\"conv1\", \"fc\"), calibration=256 train "
         "images)`, budget = fraction of those three kernels' weights, SVD-family init (HOSVD for Tucker-2, "
         f"ALS for CP); then {s.finetune_epochs} epochs of distillation from the dense model (T = 4, alpha = "
         f"0.9, lr {s.finetune_lr:g}). One seed; seconds are compression plus fine-tuning."),
        "",
        *lines,
        "",
        ("Mixed's choice per layer: the relative output error of each candidate on the calibration images, "
         "at the parameters the budget gave the layer (lower is kept)."),
        "",
        *choices(results),
        "",
        (f"Paper (Liang and Lee 2021): {PAPER}. Our conv2-4 ratios at budget 0.03 are of that order, but the "
         "net, data and training are much smaller, so compare the ordering of the policies, not the digits."),
        "",
        "Reading it: " + reading(results, dense_acc, n_test),
    ])
    write_section(args.out, HEADING, body)
    print(f"wrote section {HEADING!r} of {args.out}")


if __name__ == "__main__":
    main()

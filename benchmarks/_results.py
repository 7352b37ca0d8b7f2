"""Shared by the reproduction scripts: where they ran, and writing their section of the results file."""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch


def machine(device: str | None = None) -> str:
    """'2-core CPU (x86_64, Linux)' or the GPU's name (the GPU when ``device`` is None and one is present)."""
    if torch.cuda.is_available() and device != "cpu":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.system()}), torch {torch.__version__}"


def repro_parser(doc: str, full: str, smoke: str | None = None) -> argparse.ArgumentParser:
    """The options every reproduction takes: ``--full`` (help ``full``) or ``--smoke`` (when
    ``smoke`` is its help), ``--out`` (the results file) and ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    size = parser.add_mutually_exclusive_group()  # the scripts disagreed on which wins when both are given
    size.add_argument("--full", action="store_true", help=full)
    if smoke is not None:
        size.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed options, with ``--threads`` applied."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def run_flags(args: argparse.Namespace) -> str:
    """The ``--full`` / ``--smoke`` flag a run was given, as written after its command (or "")."""
    return " --full" if args.full else " --smoke" if getattr(args, "smoke", False) else ""


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the section that starts with ``heading`` up to the next ``## `` heading."""
    text = path.read_text() if path.exists() else "# Reproduced numbers\n\nWritten by `benchmarks/repro_*.py`.\n"
    section = f"{heading}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def interleaved(fns: list, repeats: int) -> list[list[float]]:
    """Each function's times over ``repeats`` rounds, one call per function per round (after a
    warm-up); the GPU, if any, is synchronised around each call so that its work is timed."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - start)
    return times

"""Shared by the reproduction scripts: where they ran, and writing their section of the results file."""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


@contextmanager
def other_load() -> Iterator[list[float]]:
    """How many cores other processes kept busy while the block ran (this process's CPU time
    subtracted), in the yielded list once the block ends; empty where it cannot be told. On a
    shared machine a multi-threaded ratio means little when this leaves fewer free cores than
    threads: a layer of many small parallel ops waits at every barrier for a descheduled thread,
    one large GEMM barely does."""
    found: list[float] = []
    busy, mine, wall = _busy_seconds(), time.process_time(), time.perf_counter()
    yield found
    end = _busy_seconds()
    if busy is not None and end is not None:
        used = (end - busy) - (time.process_time() - mine)
        found.append(max(0.0, used / max(time.perf_counter() - wall, 1e-9)))


def contention_note(others: list[float], threads: int) -> str:
    """A line saying how busy the machine was, and a warning when ``threads`` had no free cores."""
    if not others:
        return ""
    cores = os.cpu_count() or 1
    note = f"other processes kept {others[0]:.1f} of {cores} cores busy during the run"
    if others[0] > cores - threads + 0.25:
        note += (f"; WARNING: fewer than {threads} cores were free, so the {threads}-thread ratios are unreliable "
                 "(layers of many small ops slow down far more than the dense baseline): rerun on a quiet machine")
    return note


def interleaved(fns: list, repeats: int, clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Each function's times over ``repeats`` rounds, one call per function per round (after a
    warm-up); the GPU, if any, is synchronised around each call so that its work is timed.
    ``clock``: wall time by default; ``time.thread_time`` for single-threaded CPU work on a busy
    machine (the CPU time of this thread, blind to the time other processes hold the cores)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            sync()
            start = clock()
            fn()
            sync()
            times[k].append(clock() - start)
    return times

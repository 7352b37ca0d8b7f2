"""Shared by the reproduction scripts: where they ran, and writing their section of the results file."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch


def machine() -> str:
    """'2-core CPU (x86_64, Linux)' or the GPU's name."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.system()}), torch {torch.__version__}"


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

"""Offline English text: sentences from the docstrings of the Python standard library.

The modules are parsed with ``ast`` (never imported: some stdlib modules open a browser or a
window on import), every module / class / function docstring is split into sentences, and the
prose-like ones are kept, deduplicated and shuffled with a fixed seed. The set depends on the
Python version (its stdlib), not on anything downloaded.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"[A-Za-z][A-Za-z ,;:'()\-]*[.!?]")
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef))]
    return [d for n in nodes if (d := ast.get_docstring(n))]


def _sentences(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        if ">>>" in para or "::" in para or para.lstrip().startswith(("-", "*", ":", "|")):
            continue
        text = " ".join(para.split())
        for s in _SPLIT.split(text):
            words = s.split()
            if 6 <= len(words) <= 40 and s[0].isupper() and _PROSE.fullmatch(s):
                out.append(s)
    return out


def stdlib_sentences(seed: int = 0) -> list[str]:
    """Prose sentences (6-40 words, letters and light punctuation) from stdlib docstrings, shuffled."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        for doc in _docstrings(path):
            seen.update(_sentences(doc))
    sentences = sorted(seen)
    random.Random(seed).shuffle(sentences)
    return sentences


def splits(sizes: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """Disjoint consecutive slices of ``stdlib_sentences(seed)``, one per name, of the sizes asked
    (a size of -1 takes what is left)."""
    pool = stdlib_sentences(seed)
    out, start = {}, 0
    for name, n in sizes.items():
        end = len(pool) if n < 0 else start + n
        if end > len(pool):
            raise ValueError(f"only {len(pool)} stdlib sentences, {end} asked")
        out[name] = pool[start:end]
        start = end
    return out

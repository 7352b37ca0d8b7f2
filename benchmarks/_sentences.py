"""Offline English text: sentences from the docstrings of the Python standard library (and, for
more training text, of installed packages).

The modules are parsed with ``ast`` (never imported: some stdlib modules open a browser or a
window on import), every module / class / function docstring is split into sentences, and the
prose-like ones are kept, deduplicated and shuffled with a fixed seed. The set depends on the
Python version (its stdlib), not on anything downloaded.
"""

from __future__ import annotations

import ast
import importlib.util
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


def _loose(doc: str) -> list[str]:
    """Every sentence of 4-60 words, code and all: training text, not held-out prose."""
    return [s for para in re.split(r"\n\s*\n", doc) for s in _SPLIT.split(" ".join(para.split()))
            if 4 <= len(s.split()) <= 60]


def stdlib_text(exclude: set[str] | frozenset[str] = frozenset(), seed: int = 0) -> list[str]:
    """More stdlib docstring text for training than ``stdlib_sentences``: every sentence of 4-60
    words, with code, markup and digits (about twice as many), minus any that contains a sentence
    of ``exclude`` (the held-out ones), shuffled."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if not _SKIP_DIRS & set(path.relative_to(root).parts):
            for doc in _docstrings(path):
                seen.update(_loose(doc))
    sentences = sorted(s for s in seen if not any(e in s for e in exclude))
    random.Random(seed).shuffle(sentences)
    return sentences


def _tree_sentences(root: Path, top: Path) -> set[str]:
    """Every prose sentence of the docstrings of the ``*.py`` files under ``root`` (test folders
    and the like skipped, judged relative to ``top``)."""
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(top).parts):
            continue
        for doc in _docstrings(path):
            seen.update(_sentences(doc))
    return seen


def stdlib_sentences(seed: int = 0) -> list[str]:
    """Prose sentences (6-40 words, letters and light punctuation) from stdlib docstrings, shuffled."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sentences = sorted(_tree_sentences(root, root))
    random.Random(seed).shuffle(sentences)
    return sentences


PACKAGES = ("torch", "sympy", "networkx", "numpy")  # installed with adtn itself (torch brings the middle two)


def package_sentences(packages: tuple[str, ...] = PACKAGES, exclude: set[str] | frozenset[str] = frozenset(),
                      seed: int = 0) -> list[str]:
    """The same kind of sentences from the docstrings of installed ``packages`` (found with
    ``importlib.util.find_spec``, never imported), minus ``exclude`` (the held-out sentences, so
    that no evaluation sentence leaks into training text), shuffled. A package that is not
    installed is skipped."""
    seen: set[str] = set()
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            root = Path(folder)
            seen.update(_tree_sentences(root, root.parent))
    sentences = sorted(seen - set(exclude))
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

"""Every ```python block of docs/*.md runs, in order per page, in a fresh namespace and a temporary folder."""

import re
import time
from pathlib import Path

import pytest

import adtn

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\]\(([^)#\s]+)\)")
SLOW_BLOCK_S = 30.0  # blocks are meant to take well under 5 s; this only catches runaway ones


def blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, source) of each python block."""
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


def test_docs_exist():
    names = {p.name for p in PAGES}
    assert {"index.md", "concepts.md", "tutorial_custom_network.md", "templates.md", "compressing_models.md",
            "results.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    registered = dict(adtn.templates.TEMPLATES)
    namespace = {"__name__": f"docs_{page.stem}"}
    try:
        for line, source in blocks(page):
            start = time.perf_counter()
            try:
                exec(compile(source, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102 - running the docs is the test
            except Exception as err:
                raise AssertionError(f"{page.name}, block at line {line} failed: {type(err).__name__}: {err}") from err
            took = time.perf_counter() - start
            assert took < SLOW_BLOCK_S, f"{page.name}, block at line {line} took {took:.1f} s"
    finally:
        adtn.templates.TEMPLATES.clear()
        adtn.templates.TEMPLATES.update(registered)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: link {target!r} points nowhere"


def test_every_template_has_a_section_and_picture():
    text = (DOCS / "templates.md").read_text()
    for name in adtn.templates.names():
        assert f"## `{name}`" in text, f"templates.md has no section for {name!r}"
        assert f"](img/{name}.png)" in text and (DOCS / "img" / f"{name}.png").exists(), name


ROOT = DOCS.parent
# Where readers meet citations: the docs, the README, and the docstrings and comments of the code.
CITING = sorted([*PAGES, ROOT / "README.md", *(ROOT / "adtn").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                 *(ROOT / "demos").glob("*.py"), *(ROOT / "graphs").glob("*.py")])
MD_FILE = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")
UNCITABLE = re.compile(r"\bissues? #?\d+|§|\bMETHODS(\.md|\s+sections?\b)|\bDESIGN\.md|\bSTYLE\.md", re.IGNORECASE)


@pytest.mark.parametrize("path", CITING, ids=lambda p: str(p.relative_to(ROOT)))
def test_citations_are_in_the_repository(path):
    """A citation points at a paper or a file in the repository, never at notes or issues readers cannot open."""
    text = path.read_text()
    found = UNCITABLE.search(" ".join(text.split()))  # a citation broken across lines
    assert not found, f"{path.relative_to(ROOT)} cites {found.group()!r}, which is not in the repository"
    for number, line in enumerate(text.splitlines(), start=1):
        found = UNCITABLE.search(line)
        assert not found, f"{path.relative_to(ROOT)}:{number} cites {found.group()!r}, which is not in the repository"
        for name in MD_FILE.findall(line):
            here = [path.parent / name, ROOT / name, DOCS / name]
            assert any(p.exists() for p in here), f"{path.relative_to(ROOT)}:{number} cites {name!r}, not found"

"""benchmarks/repro_mtd.py at its --smoke size: the section it writes and one row per budget and policy."""

import importlib
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                reason="the smoke run uses sklearn's digits (pip install scikit-learn)")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_repro_mtd_smoke_writes_its_section(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its neighbour _results
    mtd = importlib.import_module("repro_mtd")
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Other (kept)\n\nbody\n")
    mtd.main(["--smoke", "--threads", "1", "--out", str(out)])
    text = out.read_text()
    assert "## Other (kept)\n\nbody" in text
    assert mtd.HEADING in text
    section = text.split(mtd.HEADING, 1)[1].split("\n## ", 1)[0]
    assert "`python benchmarks/repro_mtd.py --smoke`" in section and "Reading it: at 0.1, mixed" in section
    main_table, choice_table = section.split("Mixed's choice per layer", 1)
    body = _rows(main_table)  # the dense row has no budget
    assert [(r[0], r[1]) for r in body] == [(f"{b:g}", p) for b in mtd.SMOKE.budgets for p in mtd.POLICIES]
    for budget, policy, layers, conv, *_ in body:
        assert [part.split(":")[0] for part in layers.split(", ")] == list(mtd.COMPRESSED)
        templates = {part.split()[1] for part in layers.split(", ")}
        assert templates <= {"tucker2", "cp"} and (policy == "mixed" or templates == {policy})
        ratio = float(conv.split("(")[1].rstrip("x)"))
        assert 1 / (1.1 * float(budget)) - 0.1 <= ratio <= 1 / (0.9 * float(budget)) + 0.1  # budget met within 10%
    for r in body:
        assert 0.0 <= float(r[5]) <= 1.0 and 0.0 <= float(r[6]) <= 1.0
    choices = _rows(choice_table.split("Paper", 1)[0])  # mixed keeps the candidate with the lower error
    assert [r[1] for r in choices] == list(mtd.COMPRESSED) * len(mtd.SMOKE.budgets)
    for _, _, t2, cp, kept in choices:
        assert kept == ("tucker2" if float(t2) <= float(cp) else "cp")


def _rows(text: str) -> list[list[str]]:
    """The table rows with a budget in their first cell (no header, no dense row)."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return [r for r in rows if r[0] not in ("", "budget")]

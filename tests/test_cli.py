import subprocess
import sys

import pytest

from adtn.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--graph-only", "--out", str(tmp_path), "--batch", "8"]) == 0
    text = capsys.readouterr().out
    assert "relative difference to x @ W.T" in text and "flops=" in text
    assert (tmp_path / "demo_tt.json").exists() and (tmp_path / "demo_tt.png").exists()


def test_info_and_draw(tmp_path, capsys):
    assert main(["demo", "--graph-only", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "demo_tt.json")]) == 0
    assert "params=2304" in capsys.readouterr().out
    assert main(["draw", str(tmp_path / "demo_tt.json"), "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").exists()


def test_info_reports_bad_file(capsys):
    assert main(["info", "/nonexistent.json"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "info", "draw"])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: adtn " + command in text and "--" in text


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "adtn.cli", "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "compress" in out.stdout and "demo" in out.stdout


def test_demo_leaves_autograd_on(tmp_path):
    import torch

    main(["demo", "--graph-only", "--out", str(tmp_path), "--batch", "2"])
    assert torch.is_grad_enabled()


def test_demo_runs_the_mnist_demo(tmp_path, monkeypatch):
    """`adtn demo` hands --out / --quick / --full to demos/mnist_compress.py's run()."""
    from adtn import cli

    calls = []
    monkeypatch.setattr(cli, "_mnist_demo", lambda: type("Demo", (), {"run": staticmethod(
        lambda out, quick=False, full=False: calls.append((out, quick, full)))}))
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    assert main(["demo"]) == 0
    assert calls == [(str(tmp_path), True, False), ("demo-output", False, False)]


def test_demo_finds_the_mnist_script():
    from adtn import cli

    module = cli._mnist_demo()
    assert callable(module.run) and callable(module.main)


def test_demo_quick_and_full_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--full"])
    assert "not allowed with" in capsys.readouterr().err


def test_info_and_draw_deep_adtn(tmp_path, capsys):
    from pathlib import Path

    graph = Path(__file__).resolve().parents[1] / "graphs" / "adtn_vgg16_fc1.json"
    assert main(["info", str(graph)]) == 0
    assert "flops=" in capsys.readouterr().out
    assert main(["draw", str(graph), "-o", str(tmp_path / "deep.png")]) == 0
    assert (tmp_path / "deep.png").exists()


def test_version(capsys):
    import adtn

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"adtn {adtn.__version__}"


@pytest.mark.parametrize("command, expected", [
    ("info", r"expected a model file written by adtn\.save / torch\.save, or a graph JSON"),
    ("draw", r"expected a graph JSON \(TensorGraph\.to_json or DeepTN\.to_json\)"),
])
def test_binary_file_gets_a_named_error(tmp_path, capsys, command, expected):
    import re

    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 8)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"adtn {command}: '.*weights\.bin' is a binary file, not JSON text; {expected}", err), err


def test_graph_typo_names_file_node_and_key(tmp_path, capsys):
    import json

    from adtn.testing import tt_chain

    data = json.loads(tt_chain((2, 2), rank=2).freeze().to_json())
    node = data["graph"]["nodes"][0]
    node["legz"] = node.pop("legs")
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(data))
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"adtn info: file {str(path)!r}: node {node['id']!r}: missing key 'legs'; unknown keys ['legz']" in err


def test_draw_passes_layout_to_deep_adtn(tmp_path, monkeypatch):
    from pathlib import Path

    import adtn.draw

    seen = []
    real = adtn.draw.draw
    monkeypatch.setattr(adtn.draw, "draw", lambda *a, **k: seen.append(k.get("layout")) or real(*a, **k))
    graph = Path(__file__).resolve().parents[1] / "graphs" / "adtn_vgg16_fc1.json"
    assert main(["draw", str(graph), "-o", str(tmp_path / "deep.png"), "--layout", "circular"]) == 0
    assert seen and set(seen) == {"circular"}
    seen.clear()
    assert main(["draw", str(graph), "-o", str(tmp_path / "deep2.png")]) == 0
    assert set(seen) == {"spring"}  # a deep ADTN's own default
    seen.clear()
    assert main(["draw", str(Path(graph).parent / "tt_1024x1024_r8.json"), "-o", str(tmp_path / "tt.png")]) == 0
    assert seen == [None] and (tmp_path / "tt.png").exists()  # draw()'s own default, kamada_kawai

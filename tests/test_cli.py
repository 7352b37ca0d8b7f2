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

import subprocess
import sys

import pytest

from adtn.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--batch", "8"]) == 0
    text = capsys.readouterr().out
    assert "relative difference to x @ W.T" in text and "flops=" in text
    assert (tmp_path / "demo_tt.json").exists() and (tmp_path / "demo_tt.png").exists()


def test_info_and_draw(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
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

    main(["demo", "--out", str(tmp_path), "--batch", "2"])
    assert torch.is_grad_enabled()

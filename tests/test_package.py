"""The package namespace: submodules reachable from a bare ``import adtn``, and imports kept light."""

import subprocess
import sys

import pytest

import adtn


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


LAZY = ("data", "models", "cli", "draw", "testing", "interop", "budget")


def test_submodules_load_on_first_use():
    """In a fresh interpreter `import adtn` leaves data / models / cli unloaded; `adtn.models` loads it."""
    code = ("import sys, adtn; print(sorted(m for m in ('adtn.data', 'adtn.models', 'adtn.cli') if m in sys.modules)); "
            f"print(*[getattr(adtn, name).__name__ for name in {LAZY!r}])")
    before, names = _fresh(code).splitlines()
    assert before == "[]"
    assert names.split() == [f"adtn.{name}" for name in LAZY]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'adtn' has no attribute 'modles'"):
        adtn.modles  # noqa: B018 - the access is the test
    assert {"data", "models", "compress"} <= set(dir(adtn))
    assert callable(adtn.models.get_model) and callable(adtn.data.load_mnist5k)

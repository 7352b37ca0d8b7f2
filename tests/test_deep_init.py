"""Deep ADTN at init: any depth decodes to a finite weight with the fan-in std (no overflow).

Identity + noise gates grow the state by ~sqrt(2) each; hundreds of gates overflow float32
before the global scale can compensate, so the module rescales the gates to preserve the
mean square and retries (the weight is positively homogeneous in every gate)."""

from __future__ import annotations

import math

import pytest
import torch

from adtn.templates import get
from adtn.templates.adtn import DeepTNModule


@pytest.mark.parametrize("activation", ["relu", None])
def test_a_very_deep_adtn_initialises_finite_with_the_fan_in_std(activation):
    deep = get("adtn").build({"out": 16, "in": 16}, depth=80, activation=activation)
    module = DeepTNModule(deep, seed=0)
    w = module.dense()
    assert torch.isfinite(w).all()
    assert float(w.std()) == pytest.approx(1 / math.sqrt(16), rel=1e-3)
    w.square().sum().backward()
    grads = [p.grad for p in module.params.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_a_shallow_adtn_keeps_its_gates_as_drawn():
    # the rescue only runs when the plain decode overflows: shallow networks are unchanged
    deep = get("adtn").build({"out": 16, "in": 16}, depth=2)
    a = DeepTNModule(deep, seed=3)
    full = [g for g in a.params.values() if g.dim() == 4]
    assert any(abs(float(g.norm()) - 2.0) > 1e-3 for g in full)

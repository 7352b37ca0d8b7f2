import pytest
import torch

import adtn
from adtn.errors import AdtnError, ShapeError
from adtn.fitting import fit


def tt_graph(rank=3):
    g = adtn.TensorGraph("tt")
    g.add_node("a", legs={"o": 4, "i": 3, "r": rank})
    g.add_node("b", legs={"l": rank, "o": 3, "i": 4, "r": rank})
    g.add_node("c", legs={"l": rank, "o": 2, "i": 2})
    g.bond("a.r", "b.l").bond("b.r", "c.l")
    return g.set_outputs({"out": ["a.o", "b.o", "c.o"], "in": ["a.i", "b.i", "c.i"]}).freeze()


def test_fit_reaches_representable_target():
    target = adtn.compile(tt_graph(), dtype=torch.float64, seed=1).dense().detach()
    m = adtn.compile(tt_graph(), dtype=torch.float64, seed=2)
    result = fit(m, target, steps=1500, lr=0.05, target=1e-3, lbfgs_steps=200)
    assert result.rel_error <= 1e-3
    err = float((m.dense() - target).norm() / target.norm())
    assert err == pytest.approx(result.rel_error, rel=1e-6)
    assert result.history[0] > result.rel_error


def test_fit_stops_early():
    target = adtn.compile(tt_graph(), dtype=torch.float64, seed=1).dense().detach()
    m = adtn.compile(tt_graph(), dtype=torch.float64, seed=2)
    result = fit(m, target, steps=5000, lr=0.05, target=0.5)
    assert result.converged and result.steps < 5000 and result.rel_error <= 0.5


def test_fit_stops_on_a_plateau():
    # rank 1 cannot represent a random 24 x 24 target: the error levels off well above the target
    g = torch.Generator().manual_seed(0)
    target = torch.randn(24, 24, generator=g, dtype=torch.float64)
    m = adtn.compile(tt_graph(rank=1), dtype=torch.float64, seed=2)
    result = fit(m, target, steps=5000, lr=0.05, patience=100)
    assert result.stop == "plateau" and result.steps < 5000 and not result.converged
    full = fit(adtn.compile(tt_graph(rank=1), dtype=torch.float64, seed=2), target, steps=600, lr=0.05, patience=None)
    assert full.stop == "steps" and full.steps == 600
    assert result.rel_error <= full.rel_error * 1.01  # what the plateau stop gave up is under 1%
    reached = fit(adtn.compile(tt_graph(), dtype=torch.float64, seed=2),
                  adtn.compile(tt_graph(), dtype=torch.float64, seed=1).dense().detach(), steps=5000, lr=0.05,
                  target=0.5)
    assert reached.stop == "target"


def test_fit_bad_input():
    m = adtn.compile(tt_graph())
    with pytest.raises(ShapeError, match=r"target of shape \(3, 3\) does not match the network's dense shape \(24, 24\)"):
        fit(m, torch.zeros(3, 3))
    with pytest.raises(ShapeError, match="contains NaN"):
        fit(m, torch.full((24, 24), float("nan")))
    with pytest.raises(AdtnError, match="lr > 0"):
        fit(m, torch.zeros(24, 24), lr=0)
    with pytest.raises(AdtnError, match="patience must be None or >= 1"):
        fit(m, torch.zeros(24, 24), patience=0)
    with pytest.raises(AdtnError, match="has no dense"):
        fit(torch.nn.Linear(2, 2), torch.zeros(2, 2))

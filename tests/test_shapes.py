"""Shape search (adtn.shapes): known shapes are found, auto is never worse than the default
rule or a truncated SVD at the same budget, and encode(shape="auto") uses the choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adtn
from adtn.errors import AdtnError, TemplateError
from adtn.shapes import search


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_kronecker_sum_with_known_split_is_found():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 8, generator=g), torch.randn(2, 16, 4, generator=g)
    w = torch.kron(a[0], b[0]) + torch.kron(a[1], b[1])  # (64, 32), split out 4*16, in 8*4
    choice = search("kronecker", w, {"out": 64, "in": 32}, budget=0.1)
    assert choice.error < 1e-5
    assert tuple(choice.options["factors"][0].values()) in ((4, 8), (16, 4))
    assert choice.rank == 2


def test_tt_matrix_with_known_modes_is_found():
    g = torch.Generator().manual_seed(1)
    c0, c1 = torch.randn(4, 8, 3, generator=g), torch.randn(3, 16, 4, generator=g)  # (o, i, r), (r, o, i)
    w = torch.einsum("air,rbj->abij", c0, c1).reshape(64, 32)  # out = (4, 16), in = (8, 4)
    choice = search("tt", w, {"out": 64, "in": 32}, budget=0.15)
    assert choice.error < 1e-5
    assert choice.options["modes"] == ((4, 16), (8, 4))


def _weights():
    g = torch.Generator().manual_seed(2)
    rnd = torch.randn(64, 32, 3, 3, generator=g)
    low = (torch.randn(64, 6, generator=g) @ torch.randn(6, 32 * 9, generator=g)).reshape(64, 32, 3, 3)
    return {"random": rnd, "lowrank+noise": low + 0.05 * torch.randn(64, 32, 3, 3, generator=g),
            "linear": torch.randn(96, 64, generator=g) @ torch.diag(torch.logspace(0, -2, 64))}


@pytest.mark.parametrize("template", ["kronecker", "tt"])
@pytest.mark.parametrize("name", ["random", "lowrank+noise", "linear"])
def test_auto_never_worse_than_default(template, name):
    w = _weights()[name]
    layer = nn.Linear(w.shape[1], w.shape[0]) if w.dim() == 2 else nn.Conv2d(w.shape[1], w.shape[0], 3)
    with torch.no_grad():
        layer.weight.copy_(w)
    auto = adtn.encode(layer, template, budget=0.25, shape="auto")
    fixed = adtn.encode(layer, template, budget=0.25)
    assert auto.num_tn_params <= 0.25 * w.numel()
    assert _rel(auto.weight.detach(), w) <= _rel(fixed.weight.detach(), w) + 1e-6
    assert abs(_rel(auto.weight.detach(), w) - auto.shape_choice.error) < 1e-4
    assert "shape=auto" in repr(auto)


@pytest.mark.parametrize("template", ["kronecker", "tt"])
def test_auto_never_worse_than_truncated_svd(template):
    w = _weights()["linear"]
    budget = 0.2
    r = int(budget * w.numel() // sum(w.shape))
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    svd_err = _rel((u[:, :r] * s[:r]) @ vh[:r], w.double())
    choice = search(template, w, {"out": 96, "in": 64}, budget=budget)
    assert choice.params <= budget * w.numel()
    assert choice.error <= svd_err + 1e-5


def test_forced_shape_and_errors():
    lin = nn.Linear(32, 64)
    layer = adtn.encode(lin, "kronecker", budget=0.25, shape="auto", factors=((8, 4), (8, 8)))
    assert layer.shape_choice is None and layer.template_options["factors"] == ((8, 4), (8, 8))
    with pytest.raises(AdtnError, match="shape must be 'auto'"):
        adtn.encode(lin, "kronecker", budget=0.25, shape="best")
    with pytest.raises(AdtnError, match="needs budget="):
        adtn.encode(lin, "kronecker", rank=2, shape="auto")
    with pytest.raises(TemplateError, match="not searchable"):
        search("cp", lin.weight, {"out": 64, "in": 32}, 0.25)

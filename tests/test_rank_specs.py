"""``rank=`` through ``encode``: one int is a cap on every bond (as in tensorly), ranks per bond
are strict; semi-tensor templates get default in modes that t divides (padded when needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adtn
from adtn.errors import RankError
from adtn.templates.factor import divisible_modes


@pytest.mark.parametrize("name", ["tt", "tr", "ht", "tucker", "tucker2", "kronecker"])
def test_one_int_rank_caps_bonds_that_cannot_use_it(name):
    conv = nn.Conv2d(8, 8, 1).double()  # a 1x1 kernel: the spatial bonds can carry rank 1 only
    layer = adtn.encode(conv, name, rank=16, init="decompose")
    torch.testing.assert_close(layer.weight, conv.weight, atol=1e-10, rtol=1e-10)  # full useful rank: exact
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.conv2d(x, conv.weight, conv.bias), atol=1e-10, rtol=1e-10)


def test_kronecker_builder_stays_strict_unless_clipped():
    axes = {"out": 8, "in": 8, "kh": 1, "kw": 1}
    with pytest.raises(RankError, match=r"rank 99 for bond a.r -- b.r is larger than useful: at most 8"):
        adtn.templates.get("kronecker").build(axes, rank=99)
    assert adtn.templates.get("kronecker").formula(axes, rank=99, clip=True) == 8 * (8 + 8)


def test_ranks_per_bond_stay_strict():
    with pytest.raises(RankError, match=r"rank 16 for bond spatial.r -- core0.l is larger than useful: at most 1"):
        adtn.encode(nn.Conv2d(8, 8, 1), "tt", rank=[16, 16, 16], modes=((2, 2, 2), (2, 2, 2)))


@pytest.mark.parametrize("n,d,t,k", [(784, 3, 2, 2), (784, 3, 2, 3), (37, 2, 2, 1), (300, 3, 2, 3), (100, 2, 3, 2)])
def test_divisible_modes(n, d, t, k):
    size, modes = divisible_modes(n, d, t, k)
    assert n <= size <= n * 1.125 + t**k and len(modes) == d
    assert torch.tensor(modes).prod() == size and all(m % t == 0 for m in modes[:k])


@pytest.mark.parametrize("name", ["semi_tt", "semi_tr"])
@pytest.mark.parametrize("layer", [nn.Linear(37, 11), nn.Linear(300, 200), nn.Conv2d(5, 13, (3, 1))],
                         ids=["linear 37->11", "linear 300->200", "conv 5->13 3x1"])
def test_semi_tensor_default_modes_fit_t(name, layer):
    layer = layer.double()
    tn = adtn.encode(layer, name, rank=4, init="decompose")
    if isinstance(layer, nn.Linear):
        x = torch.randn(3, layer.in_features, dtype=torch.float64)
        ref = F.linear(x, tn.weight, tn.bias)
    else:
        x = torch.randn(2, layer.in_channels, 7, 7, dtype=torch.float64)
        ref = F.conv2d(x, tn.weight, tn.bias)
    torch.testing.assert_close(tn(x), ref, atol=1e-10, rtol=1e-10)
    assert tuple(tn.weight.shape) == tuple(layer.weight.shape)

"""Templates tt, tr, ht, semi_tt, semi_tr and the shared mode factorization helpers."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorly.tr_tensor import tr_to_tensor
from tensorly.tt_matrix import tt_matrix_to_tensor
from tensorly.tt_tensor import tt_to_tensor

import adtn
from adtn.errors import RankError, ShapeError, TemplateError
from adtn.templates import ht, semi, tt
from adtn.templates.factor import check_modes, default_modes, factorize, ranks_list, resolve_modes
from adtn.templates.registry import get

ROOT = Path(__file__).resolve().parents[1]
OURS = ("tt", "tr", "ht", "semi_tt", "semi_tr")


def compiled(name, axes, **options):
    return adtn.compile(get(name).build(axes, **options), dtype=torch.float64, seed=0)


def cores(module):
    return {k: v.detach() for k, v in module.node_tensors().items()}


def np_(t):
    return t.detach().numpy()


# ---------------------------------------------------------------------------- factor.py
@pytest.mark.parametrize(
    "n, d, want",
    [(4096, 4, (8, 8, 8, 8)), (784, 2, (28, 28)), (784, 3, (14, 8, 7)), (13, 3, (13, 1, 1)), (1, 2, (1, 1)),
     (100, 3, (5, 5, 4)), (12, 1, (12,))],
)
def test_factorize(n, d, want):
    assert factorize(n, d) == want


def test_factorize_is_descending_and_exact():
    for n in range(1, 300):
        for d in (1, 2, 3, 4):
            f = factorize(n, d)
            assert math.prod(f) == n and len(f) == d and list(f) == sorted(f, reverse=True)


def test_factorize_bad_input():
    with pytest.raises(ShapeError, match="n must be a positive integer, got 0"):
        factorize(0, 2)
    with pytest.raises(ShapeError, match="d must be a positive integer, got 0"):
        factorize(4, 0)


def test_check_modes_suggests_a_factorization():
    with pytest.raises(ShapeError, match=r"axis 'out': modes \(4, 4, 4\) multiply to 64, but the axis has size 100; "
                                         r"try \(5, 5, 4\)"):
        check_modes("out", 100, (4, 4, 4))
    with pytest.raises(ShapeError, match=r"axis 'in': modes must be positive integers, got \(4, 0\)"):
        check_modes("in", 16, (4, 0))
    assert check_modes("in", 16, [4, 4]) == (4, 4)


def test_default_modes():
    assert default_modes({"out": 4096, "in": 4096}) == {"out": (8, 8, 8, 8), "in": (8, 8, 8, 8)}
    assert default_modes({"out": 10, "in": 784}) == {"out": (5, 2, 1), "in": (14, 8, 7)}
    assert default_modes({"out": 64, "in": 32, "kh": 3, "kw": 3}, d=3) == {"out": (4, 4, 4), "in": (4, 4, 2)}


def test_resolve_modes_errors():
    axes = {"out": 16, "in": 8}
    assert resolve_modes(axes, {"out": (4, 4), "in": (2, 4)}) == {"out": (4, 4), "in": (2, 4)}
    with pytest.raises(ShapeError, match="must have the same length"):
        resolve_modes(axes, ((4, 4), (8,)))
    with pytest.raises(ShapeError, match="must be a pair"):
        resolve_modes(axes, (4, 4, 1))


def test_ranks_list():
    assert ranks_list(3, 2, "tt") == [3, 3]
    assert ranks_list((2, 5), 2, "tt") == [2, 5]
    with pytest.raises(RankError, match="tt: rank must be a positive integer, got 0"):
        ranks_list(0, 2, "tt")
    with pytest.raises(RankError, match=r"tt: expected 3 ranks \(one per bond\), got 2"):
        ranks_list((2, 2), 3, "tt")
    with pytest.raises(RankError, match="tt: rank 1 must be a positive integer, got 2.5"):
        ranks_list((2, 2.5), 2, "tt")


# ---------------------------------------------------------------------------- parameter counts
SQ = {"out": 4096, "in": 4096}
B4 = ((8, 8, 8, 8), (8, 8, 8, 8))
CONV = {"out": 64, "in": 32, "kh": 3, "kw": 3}

COUNTS = [
    ("tt", SQ, {"rank": 16}, 64 * 16 * 2 + 2 * 16 * 64 * 16),
    ("tt", {"out": 12, "in": 20}, {"rank": 3, "modes": ((3, 4), (4, 5))}, 3 * 4 * 3 + 3 * 4 * 5),
    ("tt", {"out": 12, "in": 12}, {"rank": [2, 3], "modes": ((2, 3, 2), (2, 2, 3))}, 8 + 2 * 6 * 3 + 3 * 6),
    ("tt", CONV, {"rank": 4, "d": 2}, 9 * 4 + 4 * 64 * 4 + 4 * 32),
    ("tr", SQ, {"rank": 16, "modes": B4}, 4 * 16 * 64 * 16),
    ("tr", {"out": 16, "in": 8, "kh": 3, "kw": 3}, {"rank": 2, "modes": ((4, 4), (4, 2))}, 2 * 9 * 2 + 2 * 16 * 2 + 2 * 8 * 2),
    ("tr", {"out": 12, "in": 12}, {"rank": [2, 3, 4], "modes": ((2, 3, 2), (2, 2, 3))}, 4 * 4 * 2 + 2 * 6 * 3 + 3 * 6 * 4),
    # HT (Wu et al. 2020): d*n*r + (d-2)*r^3 + r^2
    ("ht", SQ, {"rank": 16}, 4 * 64 * 16 + 2 * 16**3 + 16**2),
    ("ht", {"out": 8, "in": 8}, {"rank": 2, "modes": ((2, 2, 2), (2, 2, 2))}, 3 * 4 * 2 + 1 * 2**3 + 2**2),
    ("ht", {"out": 8, "in": 8}, {"rank": 3, "modes": ((2, 4), (4, 2))}, 8 * 3 * 2 + 3**2),
    ("ht", CONV, {"rank": 4, "d": 2}, (64 + 32 + 9) * 4 + 4**3 + 4**2),
    ("ht", {"out": 16, "in": 16}, {"rank": {"leaf0": 2, "leaf1": 3, (2,): 4, "leaf3": 4, "t01": 5, (2, 3): 5},
                                   "modes": ((2, 2, 2, 2), (2, 2, 2, 2))},
     4 * (2 + 3 + 4 + 4) + 2 * 3 * 5 + 4 * 4 * 5 + 5 * 5),
    # semi-tensor: core0 (o, i/t, r/t), middle (r/t, t, o, i/t, r/t), last (r/t, t, o, i)
    ("semi_tt", SQ, {"rank": 16, "modes": B4, "t": 2}, 8 * 4 * 8 + 2 * (8 * 2 * 8 * 4 * 8) + 8 * 2 * 8 * 8),
    ("semi_tt", SQ, {"rank": 16, "modes": B4, "t": 4}, 8 * 2 * 4 + 2 * (4 * 4 * 8 * 2 * 4) + 4 * 4 * 8 * 8),
    ("semi_tt", SQ, {"rank": 16, "modes": B4, "t": 1}, 64 * 16 * 2 + 2 * 16 * 64 * 16),
    ("semi_tt", CONV, {"rank": 4, "modes": ((8, 8), (8, 4)), "t": 2}, 9 * 4 + 4 * 8 * 4 * 2 + 2 * 2 * 8 * 4),
    ("semi_tr", SQ, {"rank": 16, "modes": B4, "t": 2}, 4 * (8 * 2 * 8 * 4 * 8)),
    ("semi_tr", CONV, {"rank": 4, "modes": ((8, 8), (8, 4)), "t": 2}, 4 * 9 * 4 + 4 * 8 * 4 * 2 + 2 * 2 * 8 * 4 * 4),
]


@pytest.mark.parametrize("name, axes, options, want", COUNTS)
def test_num_params_matches_formula(name, axes, options, want):
    t = get(name)
    g = t.build(axes, **options)
    assert g.num_params == t.formula(axes, **options) == want
    assert g.axis_sizes == dict(axes)


def test_semi_stores_about_t_squared_fewer():
    for t in (2, 4):
        assert tt.tr_params(SQ, rank=16, modes=B4) == t * t * semi.semi_tr_params(SQ, rank=16, modes=B4, t=t)


def test_semi_with_t1_is_tt():
    for ring in (False, True):
        a = (tt.build_tr if ring else tt.build_tt)({"out": 12, "in": 12}, rank=2, modes=((2, 3, 2), (2, 2, 3)))
        b = (semi.build_semi_tr if ring else semi.build_semi_tt)({"out": 12, "in": 12}, rank=2, modes=((2, 3, 2), (2, 2, 3)), t=1)
        assert {n: a.legs(n) for n in a.nodes} == {n: b.legs(n) for n in b.nodes}
        assert a.outputs == b.outputs


def test_clip_lowers_ranks_to_useful():
    g = tt.build_tt({"out": 64, "in": 64, "kh": 3, "kw": 3}, rank=16, clip=True)
    assert g.legs("spatial") == {"kh": 3, "kw": 3, "r": 9}
    g = ht.build_ht({"out": 16, "in": 16}, rank=100, modes=((4, 4), (4, 4)), clip=True)
    assert g.legs("leaf0")["r"] == 16
    # bond max min(4*8 (A's side), 5*2 * t (B's side, I_t copies its s leg)) = 32 ...
    g = semi.build_semi_tt({"out": 20, "in": 16}, rank=40, modes=((4, 5), (8, 2)), t=4, clip=True)
    assert g.legs("core1")["l"] * g.legs("core1")["s"] == 32
    # ... then down to a multiple of t = 4
    g = semi.build_semi_tt({"out": 20, "in": 16}, rank=30, modes=((4, 5), (8, 2)), t=4, clip=True)
    assert g.legs("core1")["l"] * g.legs("core1")["s"] == 28
    # the plain TT bound on B's side (10) would have refused rank 20
    g = semi.build_semi_tt({"out": 20, "in": 16}, rank=20, modes=((4, 5), (8, 2)), t=4)
    assert g.legs("core1")["l"] == 5


def test_registry_has_ours():
    for name in OURS:
        assert get(name).formula is not None
        assert get(name).kinds == ("linear", "conv")


# ---------------------------------------------------------------------------- dense == reference
def test_tt_matrix_equals_tensorly():
    mods = ((2, 3, 2), (3, 2, 2))
    m = compiled("tt", {"out": 12, "in": 12}, rank=[2, 3], modes=mods)
    c = cores(m)
    factors = [np_(c["core0"])[None], np_(c["core1"]), np_(c["core2"])[..., None]]
    ref = tt_matrix_to_tensor(factors).reshape(12, 12)
    np.testing.assert_allclose(np_(m.dense()), ref, rtol=0, atol=1e-10)


def test_tt_conv_equals_tensorly():
    m = compiled("tt", {"out": 6, "in": 4, "kh": 3, "kw": 2}, rank=[3, 2], modes=((3, 2), (2, 2)))
    c = cores(m)
    factors = [np_(c["spatial"]).reshape(1, 6, 3), np_(c["core0"]).reshape(3, 6, 2), np_(c["core1"]).reshape(2, 4, 1)]
    full = tt_to_tensor(factors).reshape(3, 2, 3, 2, 2, 2)  # kh kw o0 i0 o1 i1
    ref = full.transpose(2, 4, 3, 5, 0, 1).reshape(6, 4, 3, 2)
    np.testing.assert_allclose(np_(m.dense()), ref, rtol=0, atol=1e-10)


def test_tr_equals_tensorly():
    m = compiled("tr", {"out": 12, "in": 12}, rank=[2, 3, 4], modes=((2, 3, 2), (3, 2, 2)))
    c = cores(m)
    factors = [np_(c[f"core{k}"]).reshape(c[f"core{k}"].shape[0], -1, c[f"core{k}"].shape[-1]) for k in range(3)]
    full = tr_to_tensor(factors).reshape(2, 3, 3, 2, 2, 2)  # o0 i0 o1 i1 o2 i2
    ref = full.transpose(0, 2, 4, 1, 3, 5).reshape(12, 12)
    np.testing.assert_allclose(np_(m.dense()), ref, rtol=0, atol=1e-10)


def test_tr_conv_equals_tensorly():
    m = compiled("tr", {"out": 4, "in": 6, "kh": 2, "kw": 2}, rank=[2, 3, 2], modes=((2, 2), (3, 2)))
    c = cores(m)
    factors = [np_(c[n]).reshape(c[n].shape[0], -1, c[n].shape[-1]) for n in ("spatial", "core0", "core1")]
    full = tr_to_tensor(factors).reshape(2, 2, 2, 3, 2, 2)  # kh kw o0 i0 o1 i1
    ref = full.transpose(2, 4, 3, 5, 0, 1).reshape(4, 6, 2, 2)
    np.testing.assert_allclose(np_(m.dense()), ref, rtol=0, atol=1e-10)


def test_ht_linear_equals_einsum():
    m = compiled("ht", {"out": 16, "in": 24}, rank={"leaf0": 2, "leaf1": 3, "leaf2": 2, "leaf3": 3, "t01": 4, "t23": 4},
                 modes=((2, 2, 2, 2), (2, 3, 2, 2)))
    c = cores(m)
    assert set(c) == {"leaf0", "leaf1", "leaf2", "leaf3", "t01", "t23", "t0123"}
    ref = torch.einsum("aAp,bBq,pqs,cCu,dDv,uvw,sw->abcdABCD", c["leaf0"], c["leaf1"], c["t01"],
                       c["leaf2"], c["leaf3"], c["t23"], c["t0123"]).reshape(16, 24)
    torch.testing.assert_close(m.dense(), ref, rtol=0, atol=1e-10)


def test_ht_conv_equals_einsum():
    # three leaves: (o0, i0), (o1, i1), (kh, kw); tree (0, 1, 2) -> (0,), (1, 2)
    m = compiled("ht", {"out": 6, "in": 4, "kh": 3, "kw": 2}, rank=2, modes=((3, 2), (2, 2)))
    c = cores(m)
    assert set(c) == {"leaf0", "leaf1", "leaf2", "t12", "t012"}
    ref = torch.einsum("aAp,bBq,hwr,qrs,ps->abABhw", c["leaf0"], c["leaf1"], c["leaf2"], c["t12"], c["t012"])
    torch.testing.assert_close(m.dense(), ref.reshape(6, 4, 3, 2), rtol=0, atol=1e-10)


def stp(a, b, t):
    """The left semi-tensor product a ⋉ b = (a ⊗ I_t) b, for b with t times a's columns as rows."""
    assert b.shape[0] == a.shape[1] * t
    return torch.kron(a, torch.eye(t, dtype=a.dtype)) @ b


def test_semi_tt_equals_kron_identity():
    t = 2
    o, i = (2, 3, 2), (4, 2, 3)  # in modes of core0, core1 divide by t
    m = compiled("semi_tt", {"out": 12, "in": 24}, rank=[4, 2], modes=(o, i), t=t)
    c = cores(m)
    assert tuple(c["core0"].shape) == (2, 2, 2) and tuple(c["core1"].shape) == (2, 2, 3, 1, 1)
    assert tuple(c["core2"].shape) == (1, 2, 2, 3)
    # G0 ⋉ G1 ⋉ G2, left to right; rows collect (o0, i0', s1, o1, i1', s2), columns (o2, i2)
    p = stp(c["core0"].reshape(2 * 2, 2), c["core1"].reshape(4, -1), t)  # rows (o0, i0', s1), cols (o1, i1', r')
    p = stp(p.reshape(-1, 1), c["core2"].reshape(2, -1), t)  # rows (..., o1, i1', s2), cols (o2, i2)
    w = p.reshape(2, 2, 2, 3, 1, 2, 2, 3).permute(0, 3, 6, 1, 2, 4, 5, 7).reshape(12, 24)
    torch.testing.assert_close(m.dense(), w, rtol=0, atol=1e-10)


def test_semi_tr_equals_kron_identity():
    t = 2
    o, i = (2, 3, 2), (4, 2, 2)  # every in mode divides by t in a ring
    m = compiled("semi_tr", {"out": 12, "in": 16}, rank=[4, 2, 6], modes=(o, i), t=t)
    c = cores(m)
    c0, c1, c2 = c["core0"], c["core1"], c["core2"]
    assert tuple(c0.shape) == (3, 2, 2, 2, 2)  # (l: 6/2, s, o, i: 4/2, r: 4/2)
    w = 0
    for k in range(c0.shape[0]):  # the closing bond core2.r -- core0.l, its s leg carried along
        p = stp(c0[k].reshape(-1, 2), c1.reshape(4, -1), t)  # rows (s0, o0, i0', s1), cols (o1, i1', r')
        p = stp(p.reshape(-1, 1), c2.reshape(2, -1), t)  # rows (..., o1, i1', s2), cols (o2, i2', r0')
        w = w + p.reshape(-1, 3)[:, k]
    # (s0, o0, i0', s1, o1, i1', s2, o2, i2') -> out (o0, o1, o2), in (i0', s1, i1', s2, i2', s0)
    w = w.reshape(2, 2, 2, 2, 3, 1, 2, 2, 1).permute(1, 4, 7, 2, 3, 5, 6, 8, 0).reshape(12, 16)
    torch.testing.assert_close(m.dense(), w, rtol=0, atol=1e-10)


def test_semi_conv_bonds_to_spatial_are_ordinary():
    g = semi.build_semi_tt({"out": 16, "in": 8, "kh": 3, "kw": 3}, rank=4, modes=((4, 4), (4, 2)), t=2)
    assert g.legs("spatial") == {"kh": 3, "kw": 3, "r": 4}
    assert g.legs("core0") == {"l": 4, "o": 4, "i": 2, "r": 2}
    assert g.legs("core1") == {"l": 2, "s": 2, "o": 4, "i": 2}
    assert [str(leg) for leg in g.outputs["in"]] == ["core0.i", "core1.s", "core1.i"]
    assert adtn.compile(g).dense().shape == (16, 8, 3, 3)


# ---------------------------------------------------------------------------- apply and gradients
SMALL = {"out": 4, "in": 8}
SMALL_OPTIONS = {
    "tt": {"rank": 2, "modes": ((2, 2), (2, 4))},
    "tr": {"rank": 2, "modes": ((2, 2), (2, 4))},
    "ht": {"rank": 2, "modes": ((2, 2), (2, 4))},
    "semi_tt": {"rank": 2, "modes": ((2, 2), (2, 4)), "t": 2},
    "semi_tr": {"rank": 2, "modes": ((2, 2), (2, 4)), "t": 2},
}


@pytest.mark.parametrize("name", OURS)
def test_apply_matches_dense(name):
    m = compiled(name, {"out": 16, "in": 16}, rank=4, modes=((4, 4), (4, 4)))
    x = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(m.apply(x, "in"), x @ m.dense().T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", OURS)
def test_conv_dense_shape(name):
    options = {"rank": 2, "modes": ((4, 2), (2, 2))}
    m = compiled(name, {"out": 8, "in": 4, "kh": 3, "kw": 1}, **options)
    assert m.dense().shape == (8, 4, 3, 1)


@pytest.mark.parametrize("name", OURS)
def test_gradcheck(name):
    m = compiled(name, SMALL, **SMALL_OPTIONS[name])
    keys = list(m.params)
    params = [m.params[k].detach().clone().requires_grad_() for k in keys]
    x = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)

    def dense(*ps):
        return torch.func.functional_call(m, {f"params.{k}": p for k, p in zip(keys, ps)}, ())

    def apply(x, *ps):
        return torch.func.functional_call(m, {f"params.{k}": p for k, p in zip(keys, ps)}, (x,))

    assert torch.autograd.gradcheck(dense, params)
    assert torch.autograd.gradcheck(apply, (x, *params))


def test_gradcheck_conv():
    m = compiled("tt", {"out": 4, "in": 2, "kh": 2, "kw": 2}, rank=2, modes=((2, 2), (2, 1)))
    keys = list(m.params)
    params = [m.params[k].detach().clone().requires_grad_() for k in keys]

    def dense(*ps):
        return torch.func.functional_call(m, {f"params.{k}": p for k, p in zip(keys, ps)}, ())

    assert torch.autograd.gradcheck(dense, params)


# ---------------------------------------------------------------------------- bad input
def test_modes_not_multiplying():
    with pytest.raises(ShapeError, match=r"axis 'out': modes \(4, 4, 4\) multiply to 64, but the axis has size 100; "
                                         r"try \(5, 5, 4\)"):
        tt.build_tt({"out": 100, "in": 64}, rank=2, modes=((4, 4, 4), (4, 4, 4)))
    with pytest.raises(ShapeError, match=r"axis 'in': modes \(4, 4\) multiply to 16, but the axis has size 32; try \(8, 4\)"):
        ht.build_ht({"out": 16, "in": 32}, rank=2, modes=((4, 4), (4, 4)))


def test_rank_too_large_names_bond_and_max():
    with pytest.raises(RankError, match=r"rank 40 for bond core0.r -- core1.l is larger than useful: at most 16 "
                                        r"\(product of the modes left of the bond\)"):
        tt.build_tt({"out": 16, "in": 16}, rank=40, modes=((4, 4), (4, 4)))
    with pytest.raises(RankError, match=r"rank 16 for bond spatial.r -- core0.l is larger than useful: at most 9"):
        tt.build_tt({"out": 64, "in": 64, "kh": 3, "kw": 3}, rank=16)
    with pytest.raises(RankError, match=r"rank 50 for bond core1.r -- core2.l is larger than useful: at most 16 "
                                        r"\(rank of core1.l times the modes of core1\)"):
        tt.build_tt({"out": 64, "in": 64}, rank=[2, 50], modes=((4, 4, 4), (2, 2, 16)))
    with pytest.raises(RankError, match=r"rank 9 for bond core0.r -- core1.l is larger than useful: at most 8 "
                                        r"\(rank of core0.l times the modes of core0\)"):
        tt.build_tr({"out": 16, "in": 16}, rank=[9, 2], modes=((2, 8), (2, 2 * 4)))
    with pytest.raises(RankError, match=r"rank 20 for bond leaf0.r -- t012.a is larger than useful: at most 16 "
                                        r"\(product of the modes in its subtree\)"):
        ht.build_ht({"out": 64, "in": 64}, rank=20, modes=((4, 4, 4), (4, 4, 4)))
    with pytest.raises(RankError, match=r"rank 9 for bond t01.r -- t0123.a is larger than useful: at most 4 "
                                        r"\(product of the ranks of its children leaf0, leaf1\)"):
        ht.build_ht({"out": 16, "in": 16}, modes=((2, 2, 2, 2), (2, 2, 2, 2)),
                    rank={"leaf0": 2, "leaf1": 2, "leaf2": 3, "leaf3": 3, "t01": 9, "t23": 9})


def test_rank_zero_and_wrong_count():
    for name in OURS:
        with pytest.raises(RankError, match="rank must be a positive integer, got 0"):
            get(name).build(SMALL, rank=0, modes=((2, 2), (2, 4)))
    with pytest.raises(RankError, match=r"tt: expected 1 ranks \(one per bond\), got 2"):
        tt.build_tt(SMALL, rank=[2, 2], modes=((2, 2), (2, 4)))
    with pytest.raises(RankError, match=r"tr: expected 2 ranks \(one per bond\), got 1"):
        tt.build_tr(SMALL, rank=[2], modes=((2, 2), (2, 4)))


def test_ht_rank_dict_errors():
    modes = ((2, 2), (2, 4))
    with pytest.raises(RankError, match=r"ht: ranks dict misses nodes \['leaf1'\]"):
        ht.build_ht(SMALL, rank={"leaf0": 2}, modes=modes)
    with pytest.raises(RankError, match=r"ht: rank given for unknown tree node 't9'"):
        ht.build_ht(SMALL, rank={"leaf0": 2, "leaf1": 2, "t9": 2}, modes=modes)
    with pytest.raises(RankError, match=r"ht: the root 't01' has rank 1"):
        ht.build_ht(SMALL, rank={"leaf0": 2, "leaf1": 2, "t01": 3}, modes=modes)


def test_semi_not_divisible():
    with pytest.raises(ShapeError, match=r"semi-tensor bond core0.r -- core1.l: rank 6 is not divisible by t=4"):
        semi.build_semi_tt(SQ, rank=6, modes=B4, t=4)
    with pytest.raises(ShapeError, match=r"semi-tensor bond core0.r -- core1.l: in mode 3 of core0 is not divisible "
                                         r"by t=2"):
        semi.build_semi_tt({"out": 4, "in": 12}, rank=2, modes=((2, 2), (3, 4)), t=2)
    with pytest.raises(ShapeError, match=r"semi-tensor bond core1.r -- core0.l: in mode 3 of core1 is not divisible"):
        semi.build_semi_tr({"out": 4, "in": 12}, rank=2, modes=((2, 2), (4, 3)), t=2)
    with pytest.raises(TemplateError, match="t .* must be a positive integer, got 0"):
        semi.build_semi_tt(SQ, rank=4, t=0)


def test_ring_needs_two_cores():
    with pytest.raises(TemplateError, match="tr: a ring needs at least 2 cores, got 1"):
        tt.build_tr({"out": 8, "in": 8}, rank=2, modes=((8,), (8,)))
    with pytest.raises(TemplateError, match="semi_tr: a ring needs at least 2 cores, got 1"):
        semi.build_semi_tr({"out": 8, "in": 8}, rank=2, d=1)
    with pytest.raises(TemplateError, match="ht: a dimension tree needs at least 2 leaves, got 1"):
        ht.build_ht({"out": 8, "in": 8}, rank=2, d=1)


def test_bad_axes_and_options():
    with pytest.raises(ShapeError, match="tt: axes must be an ordered mapping with at least 2 axes"):
        tt.build_tt({"out": 8}, rank=2)
    with pytest.raises(ShapeError, match="tt: axis 'in' must have a positive integer size, got 0"):
        tt.build_tt({"out": 8, "in": 0}, rank=2)
    with pytest.raises(TemplateError, match=r"ht: unknown options \['ranks'\]"):
        ht.build_ht(SMALL, rank=2, ranks=3)
    with pytest.raises(ShapeError, match="d=3 but the modes give 2 cores"):
        tt.build_tt(SMALL, rank=2, modes=((2, 2), (2, 4)), d=3)


# ---------------------------------------------------------------------------- graphs/*.json
def _make_script():
    spec = importlib.util.spec_from_file_location("make_tt_ht", ROOT / "graphs" / "make_tt_ht.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _make_script()


@pytest.mark.parametrize("filename", sorted(MAKE.GRAPHS))
def test_declared_graphs_load_and_count(filename):
    template, axes, options = MAKE.GRAPHS[filename]
    g = adtn.TensorGraph.load(ROOT / "graphs" / filename)
    assert g.num_params == get(template).formula(axes, **options)
    assert g == MAKE.build(filename)
    assert g.axis_sizes == axes


# ---------------------------------------------------------------------------- kernel_with
KERNEL_SVD = [  # (template, options, rank of R): the truncated SVD of (out | in kh kw) in each format
    ("tt", {"modes": ((12, 1), (1, 8)), "kernel_with": 1}, lambda r: r),
    ("tr", {"modes": ((12, 1), (1, 8)), "kernel_with": 1}, lambda r: [r, 1]),
    ("ht", {"modes": ((12, 1), (1, 8)), "kernel_with": 1}, lambda r: r),
    ("semi_tt", {"modes": ((12, 1), (2, 4)), "kernel_with": 1, "t": 2}, lambda r: 2 * r),
    ("semi_tr", {"modes": ((12, 1), (2, 4)), "t": 2}, lambda r: [1, 2 * r, 6]),
]


@pytest.mark.parametrize("name, options, rank_of", KERNEL_SVD, ids=[c[0] for c in KERNEL_SVD])
def test_svd_shapes_of_a_conv_kernel_are_the_truncated_svd(name, options, rank_of):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 8, 2, 3, generator=g, dtype=torch.float64)
    axes = {"out": 12, "in": 8, "kh": 2, "kw": 3}
    u, s, vh = torch.linalg.svd(w.reshape(12, -1))
    for r in (1, 3, 5):
        graph, tensors = get(name).init(w, axes, rank=rank_of(r), **options)
        module = adtn.compile(graph, init=tensors, dtype=torch.float64)
        truncated = ((u[:, :r] * s[:r]) @ vh[:r]).reshape(w.shape)
        torch.testing.assert_close(module.dense(), truncated)
        extra = {"ht": r * r, "semi_tr": 36}.get(name, 0)  # HT's root, the ring's spatial core
        assert get(name).formula(axes, rank=rank_of(r), **options) == r * (12 + 8 * 6) + extra


@pytest.mark.parametrize("name", OURS)
def test_kernel_with_moves_the_kernel_legs_onto_a_channel_core(name):
    axes = {"out": 6, "in": 4, "kh": 3, "kw": 2}
    t = {"t": 2} if name.startswith("semi") else {}
    rank = 2
    plain = get(name).build(axes, rank=rank, modes=((3, 2), (2, 2)), **t)
    merged = get(name).build(axes, rank=rank, modes=((3, 2), (2, 2)), kernel_with=0, **t)
    nodes = merged.nodes_with_role("param")
    assert len(nodes) < len(plain.nodes_with_role("param"))  # no spatial core / kernel leaf
    assert "spatial" not in nodes and "leaf2" not in nodes
    assert {"kh", "kw"} <= set(merged.legs(nodes[0]))
    assert get(name).formula(axes, rank=rank, modes=((3, 2), (2, 2)), kernel_with=0, **t) == merged.num_params
    m = adtn.compile(merged, dtype=torch.float64, seed=0)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = m.dense()
    assert w.shape == (6, 4, 3, 2)
    layer = adtn.encode(torch.nn.Conv2d(4, 6, (3, 2)), name, rank=rank, modes=((3, 2), (2, 2)), kernel_with=0, **t)
    assert "kh" in layer.tn.graph.legs(layer.tn.graph.nodes_with_role("param")[0])
    torch.testing.assert_close(layer(x.float()), torch.nn.functional.conv2d(x.float(), layer.weight, layer.bias))


@pytest.mark.parametrize("name", ["tt", "ht", "semi_tt"])
def test_kernel_with_gradcheck(name):
    t = {"t": 2} if name == "semi_tt" else {}
    m = compiled(name, {"out": 4, "in": 4, "kh": 2, "kw": 1}, rank=2, modes=((2, 2), (2, 2)), kernel_with=1, **t)
    keys = list(m.params)
    params = [m.params[k].detach().clone().requires_grad_() for k in keys]
    x = torch.randn(3, 4, 2, 1, dtype=torch.float64, requires_grad=True)

    def apply(x, *ps):
        return torch.func.functional_call(m, {f"params.{k}": p for k, p in zip(keys, ps)}, (x,),
                                           {"axis": ("in", "kh", "kw")})

    assert torch.autograd.gradcheck(apply, (x, *params))


def test_kernel_with_errors():
    conv = {"out": 6, "in": 4, "kh": 3, "kw": 3}
    with pytest.raises(TemplateError, match="needs a conv weight"):
        get("tt").build({"out": 6, "in": 4}, rank=2, kernel_with=0)
    with pytest.raises(TemplateError, match=r"index of a channel core, 0..1 \(core0..core1\), got 2"):
        get("tr").build(conv, rank=2, modes=((3, 2), (2, 2)), kernel_with=2)
    with pytest.raises(TemplateError, match="index of a channel leaf"):
        get("ht").build(conv, rank=2, modes=((3, 2), (2, 2)), kernel_with=True)
    with pytest.raises(TemplateError, match="index of a channel core"):
        get("semi_tt").build(conv, rank=2, modes=((3, 2), (2, 2)), kernel_with=-1)

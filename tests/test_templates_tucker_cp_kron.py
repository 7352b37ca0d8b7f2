"""Templates tucker, tucker2, cp, kronecker, semi_tucker: counts, references, gradients, errors, JSON."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import tensorly as tl
import torch
from torch.func import functional_call

import adtn
from adtn.errors import RankError, ShapeError, TemplateError
from adtn.templates.cp import cp, cp_params
from adtn.templates.kronecker import default_factors, kronecker, kronecker_params
from adtn.templates.registry import get
from adtn.templates.semi_tucker import semi_tucker, semi_tucker_params
from adtn.templates.tucker import tucker, tucker2, tucker2_params, tucker_params

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
CONV = {"out": 8, "in": 6, "kh": 3, "kw": 3}
LINEAR = {"out": 12, "in": 8}

CASES = [
    ("tucker", LINEAR, {"rank": 3}),
    ("tucker", LINEAR, {"rank": (4, 2)}),
    ("tucker", CONV, {"rank": (4, 3, 2, 2)}),
    ("tucker", CONV, {"rank": {"out": 5, "kw": 2}}),
    ("tucker", CONV, {"rank": 3, "compress": ("in", "out")}),
    ("tucker2", CONV, {"rank": 3}),
    ("tucker2", CONV, {"rank": (4, 2)}),
    ("tucker2", LINEAR, {"rank": {"out": 5, "in": 3}}),
    ("cp", LINEAR, {"rank": 5}),
    ("cp", CONV, {"rank": 7}),
    ("cp", {"a": 4, "b": 3, "c": 5}, {"rank": 6}),
    ("cp", {"a": 2, "b": 3, "c": 2, "d": 2, "e": 3}, {"rank": 4}),
    ("kronecker", LINEAR, {"rank": 2}),
    ("kronecker", CONV, {"rank": 3}),
    ("kronecker", CONV, {"rank": 2, "factors": ((4, 2, 1, 3), (2, 3, 3, 1))}),
    ("kronecker", CONV, {"rank": 2, "factors": ({"out": 2, "in": 3, "kh": 3, "kw": 1}, None)}),
    ("semi_tucker", LINEAR, {"rank": 4}),
    ("semi_tucker", LINEAR, {"rank": (6, 4), "t": (3, 2)}),
    ("semi_tucker", CONV, {"rank": (4, 2), "compress": ("out", "in")}),
    ("semi_tucker", CONV, {"rank": (4, 6, 3, 3), "t": {"out": 2, "in": 2, "kh": 3, "kw": 1}}),
]


def case_id(case):
    name, axes, opts = case
    return f"{name}-{'x'.join(map(str, axes.values()))}-{opts}"


def compiled(graph, seed=0):
    return adtn.compile(graph, dtype=torch.float64, seed=seed)


def numpy_tensors(module):
    return {k: v.detach().numpy() for k, v in module.node_tensors().items()}


# ---------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_params_match_formula(case):
    name, axes, opts = case
    template = get(name)
    graph = template.build(axes, **opts)
    assert graph.num_params == template.formula(axes, **opts)
    assert graph.axis_sizes == axes
    assert adtn.compile(graph).dense().shape == tuple(axes.values())


def test_formulas_written_out():
    o, c, kh, kw = 64, 32, 3, 3
    conv = {"out": o, "in": c, "kh": kh, "kw": kw}
    assert tucker2_params(conv, rank=(10, 6)) == c * 6 + kh * kw * 6 * 10 + 10 * o
    assert cp_params(conv, rank=9) == 9 * (c + kh + kw + o)
    assert kronecker_params(conv, rank=4) == 4 * (o * kh + c * kw)  # default split (o, 1, kh, 1) x (1, c, 1, kw)
    assert tucker_params(conv, rank=(8, 4, 2, 2)) == 8 * 4 * 2 * 2 + o * 8 + c * 4 + kh * 2 + kw * 2
    assert semi_tucker_params(conv, rank=(8, 4), compress=("out", "in")) == 8 * 4 * 9 + 32 * 4 + 16 * 2
    assert tucker2(conv, rank=(10, 6)).num_params == tucker(conv, rank=(10, 6), compress=("out", "in")).num_params


def test_default_kronecker_split():
    a, b = default_factors({"out": 64, "in": 64, "kh": 3, "kw": 3})
    assert tuple(a.values()) == (64, 1, 3, 1) and tuple(b.values()) == (1, 64, 1, 3)
    a, b = default_factors({"out": 64, "in": 3, "kh": 5, "kw": 1})
    assert tuple(a.values()) == (64, 1, 5, 1) and tuple(b.values()) == (1, 3, 1, 1)
    a, b = default_factors({"out": 256, "in": 784})
    assert (a["out"], b["out"], a["in"], b["in"]) == (16, 16, 28, 28)
    a, b = default_factors({"out": 12, "in": 7})
    assert (a["out"], b["out"], a["in"], b["in"]) == (4, 3, 7, 1)


# ---------------------------------------------------------------------- dense vs references
@pytest.mark.parametrize("axes,opts", [(LINEAR, {"rank": (4, 3)}), (CONV, {"rank": (4, 3, 2, 3)}),
                                       (CONV, {"rank": {"in": 4, "kh": 2}})])
def test_tucker_matches_tensorly(axes, opts):
    m = compiled(tucker(axes, **opts))
    t = numpy_tensors(m)
    factors = [t[f"u_{ax}"] if f"u_{ax}" in t else np.eye(n) for ax, n in axes.items()]
    ref = tl.tucker_to_tensor((t["core"], factors))
    np.testing.assert_allclose(m.dense().detach().numpy(), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("axes", [LINEAR, CONV])
def test_tucker2_matches_tensorly(axes):
    m = compiled(tucker2(axes, rank=(5, 3)))
    t = numpy_tensors(m)
    assert t["core"].shape == (5, 3) + tuple(axes.values())[2:]
    factors = [t["u_out"], t["u_in"]] + [np.eye(n) for n in tuple(axes.values())[2:]]
    ref = tl.tucker_to_tensor((t["core"], factors))
    np.testing.assert_allclose(m.dense().detach().numpy(), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("axes,rank", [(LINEAR, 5), (CONV, 7), ({"a": 4, "b": 3, "c": 5}, 6),
                                       ({"a": 2, "b": 3, "c": 2, "d": 2, "e": 3}, 4)])
def test_cp_matches_tensorly(axes, rank):
    g = cp(axes, rank=rank)
    assert len(g.delta_nodes()) == (len(axes) > 2)
    assert len(adtn.plan(g).signature.operands) == len(axes)  # the delta is a hyperedge, not an operand
    m = compiled(g)
    t = numpy_tensors(m)
    ref = tl.cp_to_tensor((np.ones(rank), [t[f"u_{ax}"] for ax in axes]))
    np.testing.assert_allclose(m.dense().detach().numpy(), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("axes,opts", [(LINEAR, {"rank": 3}), (CONV, {"rank": 3}),
                                       (CONV, {"rank": 4, "factors": ((4, 2, 1, 3), (2, 3, 3, 1))})])
def test_kronecker_matches_torch_kron(axes, opts):
    m = compiled(kronecker(axes, **opts))
    a, b = m.node_tensors()["a"].detach(), m.node_tensors()["b"].detach()
    ref = sum(torch.kron(a[r], b[r]) for r in range(opts["rank"]))
    torch.testing.assert_close(m.dense().detach(), ref, rtol=0, atol=1e-10)


def test_kronecker_gkpd_example():
    g = kronecker({"out": 64, "in": 64, "kh": 3, "kw": 3}, rank=8, factors=((16, 16, 3, 1), (4, 4, 1, 3)))
    assert g.num_params == 8 * (16 * 16 * 3 + 4 * 4 * 3) == 6528
    assert g.shape("a") == (8, 16, 16, 3, 1) and g.shape("b") == (8, 4, 4, 1, 3)
    m = compiled(g)
    a, b = m.node_tensors()["a"].detach(), m.node_tensors()["b"].detach()
    ref = sum(torch.kron(a[r], b[r]) for r in range(8))
    torch.testing.assert_close(m.dense().detach(), ref, rtol=0, atol=1e-10)


def semi_reference(module, axes, ranks, ts):
    """Tucker with factors (U_k (x) I_t) on the core reshaped to its full ranks, built explicitly."""
    t = module.node_tensors()
    core = t["core"].detach().reshape([ranks.get(ax, n) for ax, n in axes.items()])
    out = core
    for k, ax in enumerate(axes):
        if ax in ranks:
            big = torch.kron(t[f"u_{ax}"].detach(), torch.eye(ts[ax], dtype=torch.float64))
            assert big.shape == (axes[ax], ranks[ax])
            out = torch.tensordot(big, out, dims=([1], [k])).movedim(0, k)
    return out


@pytest.mark.parametrize("axes,ranks,ts", [
    (LINEAR, {"out": 6, "in": 4}, {"out": 2, "in": 2}),
    (LINEAR, {"out": 6, "in": 4}, {"out": 3, "in": 4}),
    (CONV, {"out": 4, "in": 6}, {"out": 4, "in": 3}),
    (CONV, {"out": 4, "in": 6, "kh": 3, "kw": 2}, {"out": 2, "in": 2, "kh": 3, "kw": 1}),
])
def test_semi_tucker_is_kron_identity(axes, ranks, ts):
    g = semi_tucker(axes, rank=ranks, t=ts)
    for ax in ranks:
        assert g.shape(f"u_{ax}") == (axes[ax] // ts[ax], ranks[ax] // ts[ax])
    m = compiled(g)
    torch.testing.assert_close(m.dense().detach(), semi_reference(m, axes, ranks, ts), rtol=0, atol=1e-10)


def test_semi_tucker_t1_is_tucker():
    g = semi_tucker(CONV, rank=(4, 3, 2, 2), t=1)
    assert g.num_params == tucker_params(CONV, rank=(4, 3, 2, 2))
    assert g.shape("core") == (4, 3, 2, 2)


# ---------------------------------------------------------------------- gradients
GRAD_CASES = [
    ("tucker", {"out": 4, "in": 3, "kh": 2, "kw": 2}, {"rank": (2, 2, 1, 2)}),
    ("tucker", {"out": 4, "in": 3}, {"rank": 2}),
    ("tucker2", {"out": 4, "in": 3, "kh": 2, "kw": 2}, {"rank": (2, 2)}),
    ("tucker2", {"out": 4, "in": 3}, {"rank": 2}),
    ("cp", {"out": 4, "in": 3, "kh": 2, "kw": 2}, {"rank": 3}),
    ("cp", {"out": 4, "in": 3}, {"rank": 2}),
    ("kronecker", {"out": 4, "in": 6, "kh": 2, "kw": 2}, {"rank": 2}),
    ("kronecker", {"out": 4, "in": 6}, {"rank": 2}),
    ("semi_tucker", {"out": 4, "in": 6, "kh": 2, "kw": 2}, {"rank": (2, 4), "compress": ("out", "in")}),
    ("semi_tucker", {"out": 4, "in": 6}, {"rank": (4, 2)}),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
def test_gradcheck(case):
    name, axes, opts = case
    m = compiled(get(name).build(axes, **opts), seed=1)
    keys = [f"params.{k}" for k in m.params]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.params.values())
    assert torch.autograd.gradcheck(lambda *ps: functional_call(m, dict(zip(keys, ps)), ()), params)
    if len(axes) == 2:
        x = torch.randn(3, axes["in"], dtype=torch.float64, requires_grad=True)

        def applied(x, *ps):
            return functional_call(m, dict(zip(keys, ps)), (x,), {"axis": "in"})

        assert torch.autograd.gradcheck(applied, (x,) + params)
        torch.testing.assert_close(m.apply(x, "in"), x @ m.dense().T)


# ---------------------------------------------------------------------- bad input
CONV64 = {"out": 64, "in": 64, "kh": 3, "kw": 3}


def test_kronecker_factors_not_multiplying():
    with pytest.raises(ShapeError, match=r"axis 'kw': a_k \* b_k must equal the axis size, got 1 \* 2 = 2, size 3"):
        kronecker(CONV64, rank=2, factors=((16, 16, 3, 1), (4, 4, 1, 2)))
    with pytest.raises(ShapeError, match=r"axis 'in': a_shape size 5 does not divide the axis size 64"):
        kronecker(CONV64, rank=2, factors=((16, 5, 3, 1), None))
    with pytest.raises(ShapeError, match=r"a_shape: needs one value per axis"):
        kronecker(CONV64, rank=2, factors=((16, 16, 3), (4, 4, 1, 3)))


@pytest.mark.parametrize("call,match", [
    (lambda: tucker(CONV, rank=(4, 9, 2, 2)),
     r"rank 9 for bond core\.r_in -- u_in\.r is larger than useful: at most 6 \(size of axis 'in'\)"),
    (lambda: tucker2(CONV, rank=9), r"rank 9 for bond core\.r_out -- u_out\.r .* at most 8 \(size of axis 'out'\)"),
    (lambda: kronecker(CONV64, rank=193),
     r"rank 193 for bond a\.r -- b\.r is larger than useful: at most 192 \(min\(prod a, prod b\) = min\(192, 192\)\)"),
    (lambda: cp(LINEAR, rank=9), r"rank 9 for bond u_out\.r = u_in\.r is larger than useful: at most 8"),
    (lambda: cp(CONV, rank=55), r"rank 55 for bond u_out\.r = u_in\.r = u_kh\.r = u_kw\.r .* at most 54"),
    (lambda: semi_tucker(LINEAR, rank=10), r"rank 10 for bond core\.r_in -- u_in\.r .* at most 8"),
])
def test_rank_too_large(call, match):
    with pytest.raises(RankError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: tucker(CONV, rank=0),
    lambda: tucker2(CONV, rank=(3, 0)),
    lambda: cp(CONV, rank=0),
    lambda: kronecker(CONV, rank=0),
    lambda: semi_tucker(LINEAR, rank=0),
])
def test_rank_zero(call):
    with pytest.raises(RankError, match=r"rank.* must be a positive integer, got 0"):
        call()


def test_semi_tucker_not_divisible():
    with pytest.raises(ShapeError, match=r"semi-tensor bond core\.r_out -- u_out\.r: rank 6 is not divisible by t=4"):
        semi_tucker({"out": 16, "in": 8}, rank=(6, 4), t=4)
    with pytest.raises(ShapeError, match=r"semi-tensor axis 'kh' \(legs u_kh\.i, core\.t_kh\): size 3 is not "
                                         r"divisible by t=2"):
        semi_tucker(CONV, rank=2, t={"out": 2, "in": 2, "kh": 2, "kw": 1})  # t per axis is strict
    assert "t_kh" not in semi_tucker(CONV, rank=2).legs("core")  # one int t: the 3x3 axes stay plain
    with pytest.raises(ShapeError, match=r"semi_tucker: t=2 divides none of the compressed axes \[3, 5\]"):
        semi_tucker({"out": 3, "in": 5}, rank=1)
    with pytest.raises(ShapeError, match=r"semi_tucker: t for axis 'in' must be a positive integer, got 0"):
        semi_tucker(LINEAR, rank=4, t=(2, 0))


@pytest.mark.parametrize("call,match", [
    (lambda: tucker(CONV, rank=2, compress=("out", "foo")), r"tucker: compress: unknown axis 'foo'"),
    (lambda: tucker(CONV, rank={"out": 2, "foo": 2}), r"tucker: rank: unknown axis 'foo'"),
    (lambda: tucker2({"o": 4, "i": 4}, rank=2), r"tucker2: .* axis 'out' is missing"),
    (lambda: semi_tucker(LINEAR, rank=4, t={"foo": 2}), r"semi_tucker: t: unknown axis 'foo'"),
    (lambda: kronecker(CONV, rank=1, factors=({"foo": 2}, None)), r"kronecker: a_shape: unknown axis 'foo'"),
    (lambda: cp({"out": 5}, rank=1), r"cp: needs at least two axes"),
])
def test_unknown_axis(call, match):
    with pytest.raises(TemplateError, match=match):
        call()


def test_bad_axes():
    with pytest.raises(ShapeError, match=r"tucker: axis 'in' size must be a positive integer, got 0"):
        tucker({"out": 4, "in": 0}, rank=1)
    with pytest.raises(RankError, match=r"tucker: rank: needs one value per axis \['out', 'in'\], got 3"):
        tucker(LINEAR, rank=(1, 2, 3))


# ---------------------------------------------------------------------- declared graphs
def _maker():
    spec = importlib.util.spec_from_file_location("make_tucker_kron", GRAPHS / "make_tucker_kron.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()


@pytest.mark.parametrize("file", sorted(MAKER.GRAPHS))
def test_declared_graphs(file):
    graph = adtn.TensorGraph.load(GRAPHS / file)
    template, axes, options = MAKER.GRAPHS[file]
    assert graph.num_params == get(template).formula(axes, **options)
    assert graph.axis_sizes == axes
    assert graph == MAKER.build(file), f"{file} is stale: run python graphs/make_tucker_kron.py"


def test_declared_graph_numbers():
    load = adtn.TensorGraph.load
    assert load(GRAPHS / "gkpd_conv64_r8.json").num_params == 8 * (768 + 48)
    assert load(GRAPHS / "gkpd_conv64_r1.json").num_params == 816
    assert load(GRAPHS / "tucker2_conv64_r38.json").num_params == 64 * 38 + 9 * 38 * 38 + 38 * 64
    assert load(GRAPHS / "cp_conv64_r16.json").num_params == 16 * (64 + 64 + 3 + 3)
    assert math.prod(CONV64.values()) / load(GRAPHS / "tucker2_conv64_r38.json").num_params > 2


def test_semi_tucker_clip_stops_kernel_ranks_at_the_axis_and_lets_channels_grow():
    """Without clip a uniform rank on a 3x3 kernel stops at 3 for every axis, so a whole-model
    budget could not be met (vgg16 at 0.5 ended at 0.75%); with clip the channels keep growing."""
    axes = {"out": 32, "in": 16, "kh": 3, "kw": 3}
    with pytest.raises(adtn.AdtnError, match="larger than useful"):
        semi_tucker_params(axes, rank=8)
    g = semi_tucker(axes, rank=8, clip=True)
    assert g.leg_size("u_kh.r") == 3 and g.leg_size("u_out.r") == 4  # R/t with t=2 on the channels
    assert semi_tucker_params(axes, rank=8, clip=True) == g.num_params
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1))
    _, report = adtn.compress(model, "semi_tucker", budget=0.5)
    assert abs(report.fraction - 0.5) <= 0.05

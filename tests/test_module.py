import copy
import io
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adtn
from adtn.errors import AdtnError, GraphError, ShapeError
from adtn.testing import devices, ncon_dense, random_graph, tt_chain


def chain(n=4, r=3, d=3):
    """A TT-matrix-like chain of d cores with legs (o, i) of size n, bond r."""
    return tt_chain((n,) * d, r)


def ring(n=3, r=2, d=3):
    g = adtn.TensorGraph("ring")
    for k in range(d):
        g.add_node(f"c{k}", legs={"l": r, "n": n, "r": r})
    for k in range(d):
        g.bond(f"c{k}.r", f"c{(k + 1) % d}.l")
    g.set_outputs({"x": [f"c{k}.n" for k in range(d)]})
    return g.freeze()


def tree():
    g = adtn.TensorGraph("tree")
    g.add_node("root", legs={"a": 2, "b": 3})
    g.add_node("t", legs={"p": 2, "l": 2, "r": 2})
    g.add_node("u0", legs={"r": 2, "n": 3})
    g.add_node("u1", legs={"r": 2, "n": 2})
    g.add_node("u2", legs={"r": 3, "n": 4})
    g.bond("root.a", "t.p")
    g.bond("t.l", "u0.r")
    g.bond("t.r", "u1.r")
    g.bond("root.b", "u2.r")
    g.set_outputs({"out": ["u0.n", "u1.n"], "in": ["u2.n"]})
    return g.freeze()


def with_fixed():
    g = adtn.TensorGraph("fixed")
    g.add_node("v0", legs={"k": 2}, role="fixed", value=[1.0, 0.0])
    g.add_node("v1", legs={"k": 2}, role="fixed", value=[0.6, 0.8])
    g.add_node("gate", legs={"o0": 2, "o1": 2, "i0": 2, "i1": 2})
    g.add_node("w", legs={"a": 2, "b": 3})
    g.bond("v0.k", "gate.i0")
    g.bond("v1.k", "gate.i1")
    g.bond("gate.o1", "w.a")
    g.set_outputs({"out": ["gate.o0"], "in": ["w.b"]})
    return g.freeze()


GRAPHS = {"chain": chain, "ring": ring, "tree": tree, "fixed": with_fixed}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_dense_matches_ncon(name):
    g = GRAPHS[name]()
    m = adtn.compile(g, dtype=torch.float64)
    ref = ncon_dense(g, m.node_tensors())
    assert m.dense().shape == tuple(g.axis_sizes.values())
    torch.testing.assert_close(m.dense().detach(), ref, rtol=1e-12, atol=1e-12)


def _functional(m, method, *args):
    """A function of the parameter tensors (and args) for gradcheck, via torch.func."""
    names = [f"params.{n}" for n in m.params]

    def f(*tensors):
        params = dict(zip(names, tensors[: len(names)]))
        return torch.func.functional_call(m, params, tensors[len(names):], {"axis": "in"} if method else {})

    inputs = tuple(p.detach().clone().requires_grad_() for p in m.params.values())
    return f, inputs + tuple(args)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_gradcheck_dense(name):
    m = adtn.compile(GRAPHS[name](), dtype=torch.float64)
    f, inputs = _functional(m, None)
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("name", ["chain", "tree", "fixed"])
def test_gradcheck_apply(name):
    m = adtn.compile(GRAPHS[name](), dtype=torch.float64)
    x = torch.randn(3, m.graph.axis_sizes["in"], dtype=torch.float64, requires_grad=True)
    f, inputs = _functional(m, "apply", x)
    assert torch.autograd.gradcheck(f, inputs)


def test_apply_equals_dense_matmul():
    m = adtn.compile(chain(), dtype=torch.float64)
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    y = m.apply(x, axis="in")
    assert y.shape == (2, 5, 64)
    torch.testing.assert_close(y, x @ m.dense().T)
    torch.testing.assert_close(m(x), y)
    yo = m.apply(torch.randn(7, 64, dtype=torch.float64), axis="out")
    assert yo.shape == (7, 64)


def test_apply_multiple_axes():
    m = adtn.compile(tree(), dtype=torch.float64)
    x = torch.randn(4, 6, 4, dtype=torch.float64)
    y = m.apply(x, axis=("out", "in"))
    assert y.shape == (4,)
    torch.testing.assert_close(y, torch.einsum("boi,oi->b", x, m.dense()))


def test_input_nodes():
    g = adtn.TensorGraph("mps-apply")
    g.add_node("x", legs={"a": 3, "b": 2}, role="input")
    g.add_node("w", legs={"a": 3, "o": 4})
    g.bond("x.a", "w.a")
    g.set_outputs({"b": ["x.b"], "o": ["w.o"]})
    m = adtn.compile(g.freeze(), dtype=torch.float64)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    y = m(x=x)
    assert y.shape == (5, 2, 4)
    torch.testing.assert_close(y, torch.einsum("nab,ao->nbo", x, m.params["w"]))
    with pytest.raises(GraphError, match=r"takes inputs \['x'\]; missing \['x'\]"):
        m(y=x)
    with pytest.raises(ShapeError, match=r"input node 'x': tensor of shape \(5, 2, 3\) must end with its legs"):
        m(x=x.transpose(1, 2))
    with pytest.raises(GraphError, match="has input nodes"):
        m.dense()


def test_bad_apply_input():
    m = adtn.compile(chain())
    with pytest.raises(ShapeError, match=r"apply: input of shape \(3, 10\) must end with the sizes of axis \(in=64\)"):
        m.apply(torch.randn(3, 10))
    with pytest.raises(GraphError, match=r"has no axis 'kh'; axes: \['out', 'in'\]"):
        m.apply(torch.randn(3, 64), axis="kh")
    with pytest.raises(AdtnError, match="dtype torch.float64 does not match the module's torch.float32"):
        m.apply(torch.randn(3, 64, dtype=torch.float64))


def test_init_options():
    g = chain()
    tensors = {n: torch.full(g.shape(n), 0.5) for n in g.nodes}
    m = adtn.compile(g, init=tensors)
    assert torch.equal(m.params["c1"].detach(), tensors["c1"])
    m = adtn.compile(g, init=lambda name, shape: torch.ones(shape))
    assert torch.all(m.params["c0"] == 1)
    with pytest.raises(ShapeError, match=r"init for node 'c0': expected shape \(4, 4, 3\), got \(2,\)"):
        adtn.compile(g, init={"c0": torch.ones(2)})
    with pytest.raises(AdtnError, match=r"not parameters of 'chain': \['zz'\]"):
        adtn.compile(g, init={"zz": torch.ones(2)})
    with pytest.raises(ShapeError, match="contains NaN"):
        adtn.compile(g, init={"c0": torch.full((4, 4, 3), float("nan"))})
    with pytest.raises(AdtnError, match="unknown init hint 'bogus'"):
        adtn.compile(g, init="bogus")


def test_normal_init_keeps_unit_variance():
    g = chain(n=4, r=16, d=3)
    m = adtn.compile(g, seed=1, std=0.1)
    std = float(m.dense().std())
    assert 0.05 < std < 0.2


def test_state_dict_round_trip_and_deepcopy():
    m = adtn.compile(with_fixed(), dtype=torch.float64)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    m2 = adtn.compile(with_fixed(), dtype=torch.float64)
    m2.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(m.dense(), m2.dense())
    assert set(m.state_dict()) == {"params.gate", "params.w", "fixed.v0", "fixed.v1"}
    m3 = copy.deepcopy(m)
    assert torch.equal(m3.dense(), m.dense())
    m3.params["w"].data.zero_()
    assert not torch.equal(m3.dense(), m.dense())


def test_to_and_double():
    m = adtn.compile(with_fixed())
    assert m.dense().dtype == torch.float32
    m.double()
    assert m.dense().dtype == torch.float64 and m.fixed["v0"].dtype == torch.float64


def test_eval_cache_invalidated_by_optimizer_step():
    m = adtn.compile(chain())
    m.eval()
    with torch.no_grad():
        w1 = m.dense()
        assert m.dense() is w1
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.dense().sum().backward()  # grad enabled: not cached
    opt.step()
    with torch.no_grad():
        w2 = m.dense()
    assert w2 is not w1 and not torch.equal(w1, w2)


def test_cost():
    m = adtn.compile(chain(n=8, r=16, d=4))
    dense_cost = m.cost()
    apply_cost = m.cost(batch=128, axis="in")
    assert dense_cost.params == m.graph.num_params == sum(p.numel() for p in m.parameters())
    assert dense_cost.largest_intermediate == 4096 * 4096
    assert apply_cost.flops > 0 and apply_cost.largest_intermediate < 4096 * 4096
    assert "flops=" in str(apply_cost)


def test_torch_compile():
    torch._dynamo.reset()
    m = adtn.compile(chain(), dtype=torch.float32)
    x = torch.randn(4, 64)
    compiled = torch.compile(lambda x: m.apply(x, "in"), backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), m.apply(x, "in"))


@pytest.mark.parametrize("device", devices())
def test_device(device):
    m = adtn.compile(chain(), device=device)
    assert m.dense().device.type == device
    assert m.apply(torch.randn(2, 64, device=device)).device.type == device


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_graphs_match_ncon(seed):
    g = random_graph(random.Random(seed))
    m = adtn.compile(g, dtype=torch.float64, seed=seed % 1000)
    ref = ncon_dense(g, m.node_tensors())
    torch.testing.assert_close(m.dense().detach(), ref, rtol=1e-10, atol=1e-10)

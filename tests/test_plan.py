import pytest
import torch

import adtn
from adtn.errors import GraphError
from adtn.plan import choose_optimizer, clear_cache, signature
from adtn.testing import brickwall, ncon_dense, rel_error


def long_chain(d=40, n=2, r=2):
    """An MPS of d cores: 2*d - 1 distinct indices, well past torch.einsum's 52 letters."""
    g = adtn.TensorGraph("mps")
    for k in range(d):
        legs = {"n": n}
        if k:
            legs["l"] = r
        if k < d - 1:
            legs["r"] = r
        g.add_node(f"c{k}", legs=legs)
    for k in range(d - 1):
        g.bond(f"c{k}.r", f"c{k + 1}.l")
    g.set_outputs({"x": [f"c{k}.n" for k in range(d)]})
    return g.freeze()


def ladder(n=30):
    """Two chains joined by rungs: ~3n indices but a tiny dense tensor."""
    g = adtn.TensorGraph("ladder")
    for k in range(n):
        for row in "ab":
            g.add_node(f"{row}{k}", legs={"l": 2, "r": 2, "u": 2})
        g.bond(f"a{k}.u", f"b{k}.u")
        if k:
            g.bond(f"a{k - 1}.r", f"a{k}.l")
            g.bond(f"b{k - 1}.r", f"b{k}.l")
    g.set_outputs({"left": ["a0.l", "b0.l"], "right": [f"a{n - 1}.r", f"b{n - 1}.r"]})
    return g.freeze()


def test_many_indices_contract_through_pairwise_steps():
    g = ladder(30)
    assert len(signature(g).size_dict) > 52
    m = adtn.compile(g, dtype=torch.float64, std=1.0)
    ref = ncon_dense(g, m.node_tensors())
    torch.testing.assert_close(m.dense().detach(), ref, rtol=1e-10, atol=1e-10)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(m.apply(x, "left"), x @ ref)


def test_signature_symbols_and_feed():
    g = long_chain(d=3)
    sig = signature(g, feed=("x",), batch=5)
    names = [n for n, _ in sig.operands]
    assert names == ["c0", "c1", "c2", "_batch:x"]
    assert sig.output == sig.operands[-1][1][0]  # only the batch symbol remains
    assert sig.size_dict[sig.output] == 5
    with pytest.raises(GraphError, match=r"cannot feed axis 'nope'"):
        signature(g, feed=("nope",))


def test_plans_are_cached_by_structure_and_shape():
    clear_cache()
    g1, g2 = long_chain(d=5), long_chain(d=5)
    p1 = adtn.plan(g1)
    assert adtn.plan(g2) is p1  # same structure, different objects
    assert adtn.plan(g1, feed=("x",), batch=8) is not p1
    assert adtn.plan(g1, feed=("x",), batch=8) is adtn.plan(g1, feed=("x",), batch=8)
    m = adtn.compile(g1)
    m.dense()
    assert m.plan() is p1


def test_unfrozen_graph_cannot_be_planned():
    g = adtn.TensorGraph("open")
    g.add_node("a", legs={"i": 2})
    g.set_outputs({"x": ["a.i"]})
    with pytest.raises(GraphError, match="must be frozen before planning"):
        adtn.plan(g)


def test_optimizer_choice_never_exhaustive_on_big_graphs():
    assert choose_optimizer(4) == "optimal"
    assert choose_optimizer(10) == "dp"
    assert choose_optimizer(50) not in ("optimal", "dp")


def test_brickwall_plans_fast_and_contracts_correctly():
    g = brickwall(q=10, depth=2)
    cost = adtn.plan(g).cost
    assert cost.optimizer not in ("optimal", "dp")
    m = adtn.compile(g, dtype=torch.float64)
    # reference: apply each gate as a 4x4 map to the full state vector
    state = torch.zeros((2,) * 10, dtype=torch.float64)
    state[(0,) * 10] = 1.0
    n = 0
    for _ in range(2):
        for start in (0, 1):
            for k in range(start, 9, 2):
                gate = m.params[f"g{n}"]
                n += 1
                state = torch.tensordot(state, gate, dims=([k, k + 1], [0, 1])).movedim((-2, -1), (k, k + 1))
    assert rel_error(m.dense().detach(), state.reshape(-1)) < 1e-12


def test_cotengra_optimizer_when_installed():
    pytest.importorskip("cotengra")
    g = brickwall(q=8, depth=2)
    m = adtn.compile(g, dtype=torch.float64, optimize="cotengra")
    ref = adtn.compile(g, init=dict(m.params.items()), dtype=torch.float64)
    assert rel_error(m.dense().detach(), ref.dense().detach()) < 1e-12


def test_large_steps_use_layout_aware_matmul_and_stay_exact():
    from adtn.plan import SMALL_STEP
    from adtn.testing import tt_chain

    g = tt_chain((8, 8, 8), rank=8)
    m = adtn.compile(g, dtype=torch.float64)
    a, b, c = (m.params[f"c{k}"].detach() for k in range(3))
    ref = torch.einsum("aAr,rbBs,scC->abcABC", a, b, c).reshape(512, 512)
    assert 512 * 512 > SMALL_STEP  # the last step takes the permute -> matmul path
    torch.testing.assert_close(m.dense().detach(), ref, rtol=1e-12, atol=1e-12)
    x = torch.randn(300, 512, dtype=torch.float64)
    torch.testing.assert_close(m.apply(x, "in"), x @ ref.T, rtol=1e-10, atol=1e-10)

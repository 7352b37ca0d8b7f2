import pytest
import torch

import adtn
from adtn.interop import from_tensornetwork, to_tensornetwork

tn = pytest.importorskip("tensornetwork")


def graph():
    g = adtn.TensorGraph("ring3")
    for k in range(3):
        g.add_node(f"c{k}", legs={"l": 2, "n": 3, "r": 2})
    for k in range(3):
        g.bond(f"c{k}.r", f"c{(k + 1) % 3}.l")
    return g.set_outputs({"x": ["c0.n", "c1.n"], "y": ["c2.n"]}).freeze()


def test_to_tensornetwork_contracts_to_dense():
    m = adtn.compile(graph(), dtype=torch.float64)
    nodes, outputs = to_tensornetwork(m)
    order = outputs["x"] + outputs["y"]
    result = tn.contractors.auto(nodes, output_edge_order=order).tensor
    torch.testing.assert_close(result.reshape(9, 3), m.dense().detach())


def test_round_trip_through_tensornetwork():
    m = adtn.compile(graph(), dtype=torch.float64)
    nodes, outputs = to_tensornetwork(m)
    g2, tensors = from_tensornetwork(nodes, outputs)
    g = graph()
    assert {n: g2.legs(n) for n in g2.nodes} == {n: g.legs(n) for n in g.nodes}
    assert {frozenset((str(b.a), str(b.b))) for b in g2.bonds} == {frozenset((str(b.a), str(b.b))) for b in g.bonds}
    assert g2.outputs == g.outputs
    m2 = adtn.compile(g2, init=tensors, dtype=torch.float64)
    torch.testing.assert_close(m2.dense(), m.dense())


def test_input_graph_is_refused():
    g = adtn.TensorGraph("in")
    g.add_node("x", legs={"a": 2}, role="input")
    g.add_node("w", legs={"a": 2, "b": 2})
    g.bond("x.a", "w.a")
    m = adtn.compile(g.set_outputs({"b": ["w.b"]}).freeze())
    with pytest.raises(adtn.GraphError, match="has input nodes"):
        to_tensornetwork(m)

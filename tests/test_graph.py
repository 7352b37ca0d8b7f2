import json

import networkx as nx
import pytest
import torch

import adtn
from adtn.errors import FrozenGraphError, GraphError, SchemaError, ShapeError


def chain():
    g = adtn.TensorGraph("example")
    g.add_node("a", legs={"i": 4, "r": 3})
    g.add_node("b", legs={"r": 3, "j": 5})
    g.add_node("v", legs={"k": 2}, role="fixed", value=torch.tensor([1.0, 0.0]))
    g.add_node("c", legs={"k": 2, "m": 2})
    g.bond("a.r", "b.r")
    g.bond("v.k", "c.k")
    g.set_outputs({"out": ["b.j", "c.m"], "in": ["a.i"]})
    return g


def test_build_and_read():
    g = chain().freeze()
    assert g.frozen
    assert g.axis_sizes == {"out": 10, "in": 4}
    assert g.axis_shape("out") == (5, 2)
    assert g.num_params == 4 * 3 + 3 * 5 + 4
    assert g.nx.number_of_nodes() == 4 and g.nx.number_of_edges() == 2
    assert str(g.partner("a.r")) == "b.r"
    assert g.partner("b.j") is None
    assert [(str(b.a), str(b.b), b.size) for b in g.bonds] == [("a.r", "b.r", 3), ("v.k", "c.k", 2)]
    assert "params=31" in repr(g)


def test_json_round_trip_is_exact(tmp_path):
    g = chain().freeze()
    text = g.to_json()
    assert json.loads(text)["schema"] == adtn.graph.SCHEMA
    g2 = adtn.TensorGraph.from_json(text)
    assert g2 == g and g2.structure_hash() == g.structure_hash()
    assert g2.node("v")["value"] == [1.0, 0.0]
    path = tmp_path / "g.json"
    g.save(path)
    assert adtn.TensorGraph.load(path) == g


def test_structure_hash_ignores_values_but_not_structure():
    g1 = chain().freeze()
    g2 = chain()
    g2.nx.nodes["v"]["value"] = [0.0, 1.0]
    assert g1.structure_hash() == g2.freeze().structure_hash()
    g3 = chain()
    g3.set_outputs({"out": ["c.m", "b.j"], "in": ["a.i"]})
    assert g3.freeze().structure_hash() != g1.structure_hash()


def test_copy_is_editable():
    g = chain().freeze()
    h = g.copy(name="edited")
    assert not h.frozen and h.name == "edited"
    h.add_node("z", legs={"q": 2})
    assert "z" in h and "z" not in g


@pytest.mark.parametrize(
    "action, error, match",
    [
        (lambda g: g.add_node("z", legs={"x": 3}).add_node("y", legs={"x": 2}).bond("z.x", "y.x"), GraphError, r"bond z\.x -- y\.x: leg sizes must match, got 3 and 2"),
        (lambda g: g.bond("a.i", "b.j"), GraphError, r"leg a\.i is already in output axis 'in'"),
        (lambda g: g.bond("a.r", "c.m"), GraphError, r"leg a\.r is already bonded to b\.r"),
        (lambda g: g.bond("a.x", "b.j"), GraphError, r"node 'a' has no leg 'x'; its legs: \['i', 'r'\]"),
        (lambda g: g.bond("q.x", "b.j"), GraphError, r"unknown node 'q'"),
        (lambda g: g.bond("a_i", "b.j"), GraphError, r"addressed as 'node.leg'"),
        (lambda g: g.add_node("a", legs={"x": 2}), GraphError, r"node 'a' already exists"),
        (lambda g: g.add_node("z", legs={"x": 0}), GraphError, r"leg z\.x: size must be a positive integer, got 0"),
        (lambda g: g.add_node("z", legs={"x": 2.5}), GraphError, r"positive integer, got 2\.5"),
        (lambda g: g.add_node("z", legs={"x": True}), GraphError, r"positive integer, got True"),
        (lambda g: g.add_node("z.y", legs={"x": 2}), GraphError, r"node name must be a non-empty string without '\.'"),
        (lambda g: g.add_node("z", legs={}), GraphError, r"legs must be a non-empty mapping"),
        (lambda g: g.add_node("z", legs={"x": 2}, role="weird"), GraphError, r"role must be one of"),
        (lambda g: g.add_node("z", legs={"x": 2}, role="fixed"), GraphError, r"fixed node 'z' needs a value of shape \(2,\)"),
        (
            lambda g: g.add_node("z", legs={"x": 2}, role="fixed", value=[1.0, 2.0, 3.0]),
            ShapeError,
            r"fixed node 'z': value must have shape \(2,\) \(legs \['x'\]\), got \(3,\)",
        ),
        (
            lambda g: g.add_node("z", legs={"x": 2}, role="fixed", value=[1.0, float("nan")]),
            ShapeError,
            r"fixed node 'z': value contains NaN",
        ),
        (lambda g: g.add_node("z", legs={"x": 2}, value=[1.0, 2.0]), GraphError, r"only fixed nodes take a value"),
        (lambda g: g.set_outputs({"out": ["a.r"]}), GraphError, r"output axis 'out': leg a\.r is bonded to b\.r, not open"),
        (lambda g: g.set_outputs({"out": ["a.i"], "in": ["a.i"]}), GraphError, r"leg a\.i is in two output axes: 'out' and 'in'"),
        (lambda g: g.set_outputs({"out": ["a.nope"]}), GraphError, r"node 'a' has no leg 'nope'"),
        (lambda g: g.set_outputs({"out": []}), GraphError, r"output axis 'out' has no legs"),
    ],
)
def test_bad_input_messages(action, error, match):
    g = chain()
    with pytest.raises(error, match=match):
        action(g)


def test_open_leg_in_no_axis():
    g = chain()
    g.set_outputs({"out": ["b.j"], "in": ["a.i"]})
    with pytest.raises(GraphError, match=r"open leg c\.m \(size 2\) is in no output axis"):
        g.freeze()


def test_empty_graph_does_not_freeze():
    with pytest.raises(GraphError, match="has no nodes"):
        adtn.TensorGraph("empty").freeze()


def test_mutation_after_freeze_raises():
    g = chain().freeze()
    with pytest.raises(FrozenGraphError, match=r"graph 'example' is frozen: cannot add node 'z'"):
        g.add_node("z", legs={"x": 2})
    with pytest.raises(FrozenGraphError, match="frozen: cannot bond"):
        g.bond("b.j", "c.m")
    with pytest.raises(FrozenGraphError, match="frozen: cannot set outputs"):
        g.set_outputs({})
    with pytest.raises(nx.NetworkXError, match="Frozen graph"):
        g.nx.add_node("sneaky")


def test_json_unknown_schema():
    data = json.loads(chain().freeze().to_json())
    data["schema"] = "adtn.graph/99"
    with pytest.raises(SchemaError, match=r"must have schema 'adtn.graph/1', got 'adtn.graph/99'"):
        adtn.TensorGraph.from_json(json.dumps(data))
    with pytest.raises(SchemaError, match="could not be parsed"):
        adtn.TensorGraph.from_json("{not json")
    with pytest.raises(SchemaError, match="no such file"):
        adtn.TensorGraph.load("/nonexistent/graph.json")


def test_errors_are_value_errors():
    assert issubclass(adtn.AdtnError, ValueError)
    assert issubclass(GraphError, adtn.AdtnError)


def test_load_structure_dispatches_on_schema(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "graphs"
    assert isinstance(adtn.load_structure(root / "tt_4096x4096_r16.json"), adtn.TensorGraph)
    deep = adtn.load_structure(root / "adtn_vgg16_fc1.json")
    assert isinstance(deep, adtn.DeepTN) and deep.num_params == 200
    with pytest.raises(SchemaError, match="schema must be"):
        adtn.load_structure('{"schema": "other/1"}')
    with pytest.raises(SchemaError, match="no such file"):
        adtn.load_structure(tmp_path / "missing.json")


def _chain_data():
    return json.loads(chain().freeze().to_json())


def _typo_node(data):
    data["graph"]["nodes"][0]["leg"] = data["graph"]["nodes"][0].pop("legs")


def _typo_init(data):
    data["graph"]["nodes"][1]["int"] = data["graph"]["nodes"][1].pop("init")


def _typo_edge(data):
    data["graph"]["edges"][0]["end"] = data["graph"]["edges"][0].pop("ends")


def _typo_links(data):
    data["graph"]["links"] = data["graph"].pop("edges")


def _edge_to_nowhere(data):
    data["graph"]["edges"][0]["target"] = "ghost"


@pytest.mark.parametrize(
    "edit, match",
    [
        (_typo_node, r"node 'a': missing key 'legs'; unknown keys \['leg'\]"),
        (_typo_init, r"node 'b': unknown key 'int' \(did you mean 'init'\?\)"),
        (_typo_edge, r"edge 'a' -- 'b': missing key 'ends'; unknown keys \['end'\]"),
        (_typo_links, r"graph JSON 'graph': missing key 'edges'; unknown keys \['links'\]"),
        (_edge_to_nowhere, r"edge 'a' -- 'ghost': target 'ghost' is not a node"),
        (lambda d: d.update(nme="x"), r"graph JSON: unknown key 'nme' \(did you mean 'name'\?\)"),
    ],
)
def test_json_typo_names_file_node_and_key(tmp_path, edit, match):
    data = _chain_data()
    edit(data)
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=rf"file '.*typo\.json': {match}"):
        adtn.TensorGraph.load(path)
    with pytest.raises(SchemaError, match=rf"file '.*typo\.json': {match}"):
        adtn.load_structure(path)
    with pytest.raises(SchemaError, match=rf"JSON string: {match}"):
        adtn.TensorGraph.from_json(json.dumps(data))


def test_json_node_metadata_survives_the_checks():
    g = chain()
    g.add_node("z", legs={"q": 2}, on=[0, 1], boundary=True)
    g.set_outputs({"out": ["b.j", "c.m"], "in": ["a.i"], "z": ["z.q"]}).freeze()
    again = adtn.TensorGraph.from_json(g.to_json())
    assert again == g and again.node("z")["on"] == [0, 1]


def test_json_graph_errors_name_the_file(tmp_path):
    data = _chain_data()
    data["graph"]["edges"][0]["legs"] = ["i", "r"]  # a.i (size 4) against b.r (size 3)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GraphError, match=r"file .*bad\.json.: bond a\.i -- b\.r: leg sizes must match, got 4 and 3"):
        adtn.TensorGraph.load(path)


def test_deep_json_typo_names_the_key():
    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "graphs"
    data = json.loads((root / "adtn_vgg16_fc1.json").read_text())
    data["operator"] = data.pop("operators")
    with pytest.raises(SchemaError, match=r"JSON string: DeepTN JSON: missing key 'operators'; unknown keys"):
        adtn.DeepTN.from_json(json.dumps(data))


def test_binary_file_is_named_not_decoded(tmp_path):
    path = tmp_path / "weights.json"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SchemaError, match=r"graph JSON: file '.*weights\.json' is binary, not text; expected a JSON"):
        adtn.TensorGraph.load(path)
    with pytest.raises(SchemaError, match=r"is not a file"):
        adtn.load_structure(tmp_path)

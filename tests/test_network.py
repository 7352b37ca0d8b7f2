"""TNNetwork: one base for compiled graphs and deep ADTN, one state dict key scheme, and models
saved before the deep ADTN moved into ``adtn/templates/adtn/`` still load."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import adtn
from adtn.compiler import network_class
from adtn.errors import AdtnError, GraphError, ShapeError
from adtn.layers import TNLinear
from adtn.module import TNModule
from adtn.network import PLANS, TNNetwork
from adtn.templates import template_of
from adtn.templates.adtn import DeepTN, DeepTNModule, build
from adtn.testing import tt_chain
from adtn.tracing import LRUCache

DATA = Path(__file__).resolve().parent / "data"


def _networks() -> dict[str, TNNetwork]:
    torch.manual_seed(0)
    return {
        "graph": adtn.compile(tt_chain((2, 4), rank=3), dtype=torch.float64),
        "deep_depth1": adtn.compile(build({"out": 8, "in": 8}), dtype=torch.float64),
        "deep_depth2": adtn.compile(build({"out": 8, "in": 8}, depth=2, learn_scale=True), dtype=torch.float64),
    }


NETWORKS = list(_networks())


# ---------------------------------------------------------------------- the shared interface
@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_answers_the_base_interface(name):
    tn = _networks()[name]
    assert isinstance(tn, TNNetwork) and type(tn) is network_class(tn.structure)
    assert tn.axes == {"out": 8, "in": 8} and tn.dtype == torch.float64 and tn.device.type == "cpu"
    assert isinstance(tn._plans, LRUCache) and tn._plans.maxsize == PLANS  # declared in __init__
    x = torch.randn(5, 8, dtype=torch.float64)
    w = tn.dense()
    torch.testing.assert_close(tn.apply(x, "in"), x @ w.T)
    torch.testing.assert_close(tn(x), x @ w.T)
    assert tn.cost().params == sum(p.numel() for p in tn.parameters())
    nodes = tn.node_tensors()
    assert set(tn.params) <= set(nodes) and all(nodes[n] is tn.params[n] for n in tn.params)
    streams = tn.stream_plan(("in",), 5)
    assert (streams is None) == (name == "deep_depth2")  # a deep ADTN past depth 1 rebuilds its weight
    assert (tn.dense_plan() is None) == name.startswith("deep")
    assert (tn.graph is None) == name.startswith("deep")
    assert (tn.split_cost(5) is None) == (name != "deep_depth2")


@pytest.mark.parametrize("name", NETWORKS)
def test_check_input_names_the_axis_and_size(name):
    tn = _networks()[name]
    with pytest.raises(GraphError, match=r"has no axis 'nope'; axes: \['out', 'in'\]"):
        tn.check_input(torch.zeros(2, 8, dtype=torch.float64), ("nope",))
    with pytest.raises(ShapeError, match=r"input of shape \(2, 7\) must end with the sizes of axis \(in=8\)"):
        tn.check_input(torch.zeros(2, 7, dtype=torch.float64), ("in",))
    with pytest.raises(AdtnError, match="dtype torch.float32 does not match the module's torch.float64"):
        tn.apply(torch.zeros(2, 8), "in")


@pytest.mark.parametrize("name", NETWORKS)
def test_rescale_multiplies_the_dense_tensor(name):
    tn = _networks()[name]
    before = tn.dense().detach().clone()
    tn.rescale_(-2.5)
    torch.testing.assert_close(tn.dense(), -2.5 * before)


def test_network_class_rejects_what_is_not_a_structure():
    with pytest.raises(AdtnError, match="a TN network needs a TensorGraph or DeepTN structure, got dict"):
        network_class({"out": 4})
    with pytest.raises(AdtnError, match="needs a TensorGraph or DeepTN structure, got str"):
        TNLinear(4, 4, structure="tt")


def test_template_of_a_deep_adtn_is_the_adtn_template_with_its_options():
    deep = build({"out": 16, "in": 8}, depth=2, activation="leaky_relu")
    found = template_of(deep)
    assert found is not None and found[0].name == "adtn"
    assert found[1] == {"depth": 2, "activation": "leaky_relu"}
    back = DeepTN.from_json(deep.to_json())  # the stamp travels with the JSON, as a graph's does
    assert template_of(back)[0].name == "adtn" and back == deep
    layer = TNLinear(8, 16, structure=deep)
    assert layer.template == "adtn" and layer.template_options == {"depth": 2, "activation": "leaky_relu"}


# ---------------------------------------------------------------------- one key scheme
def test_one_state_dict_key_scheme():
    keys = {name: set(tn.state_dict()) for name, tn in _networks().items()}
    assert all(k.startswith(("params.", "fixed.")) for k in keys["graph"])
    assert {k for k in keys["deep_depth2"] if not k.startswith("params.")} == {"scale", "gain"}
    assert "params.l0_g0" in keys["deep_depth2"] and "params.l1_g0" in keys["deep_depth2"]


def test_a_deep_adtn_state_dict_in_the_old_gates_layout_loads():
    torch.manual_seed(1)
    model = nn.Sequential(TNLinear(8, 8, template="adtn", depth=2), nn.ReLU(), TNLinear(8, 4, template="tt", rank=2))
    state = model.state_dict()
    # the layout written before the network base: the deep ADTN's gates under "gates."
    old = OrderedDict((k.replace("0.tn.params.", "0.tn.gates."), v.clone()) for k, v in state.items())
    assert "0.tn.gates.l0_g0" in old and not any(k.startswith("0.tn.params.") for k in old)
    assert "2.tn.params.core0" in old  # a graph's keys never changed
    torch.manual_seed(2)
    fresh = nn.Sequential(TNLinear(8, 8, template="adtn", depth=2), nn.ReLU(), TNLinear(8, 4, template="tt", rank=2))
    x = torch.randn(3, 8)
    assert not torch.allclose(fresh(x), model(x))
    result = fresh.load_state_dict(old)  # strict: every key found after the renaming
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(fresh(x), model(x))
    assert "0.tn.gates.l0_g0" in old  # the caller's dict is left as it was


# ---------------------------------------------------------------------- old .pt files
def _load_fixture() -> dict:
    """``tests/data/pickled_before_network_base.pt.gz``: ``torch.save({"model", "x", "y"})`` of
    ``nn.Sequential(TNLinear(8, 8, template="adtn", depth=2), nn.ReLU(), TNLinear(8, 4, template="tt",
    rank=2))`` (seed 0, eval mode) written by the code before the network base (adtn.deep_module,
    gates under ``gates``), gzipped."""
    data = gzip.decompress((DATA / "pickled_before_network_base.pt.gz").read_bytes())
    # the class paths as they were: DeepTN in adtn.deep, DeepTNModule in adtn.deep_module, Buffers in adtn.module
    assert {b"adtn.deep", b"adtn.deep_module", b"adtn.module"} <= set(re.findall(rb"adtn[a-z_.]*", data))
    return torch.load(io.BytesIO(data), weights_only=False)


def test_a_model_pickled_before_the_move_loads_and_runs():
    saved = _load_fixture()
    model, x, y = saved["model"], saved["x"], saved["y"]
    deep = model[0].tn
    assert isinstance(deep, DeepTNModule) and isinstance(deep.structure, DeepTN)
    assert isinstance(model[2].tn, TNModule)
    assert "params" in deep._modules and "gates" not in deep._modules
    assert isinstance(deep._plans, LRUCache) and deep.axes == {"out": 8, "in": 8}
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-6)  # float32 round-off differs across CPUs
    keys = set(model.state_dict())
    assert "0.tn.params.l0_g0" in keys and not any(".gates." in k for k in keys)
    model.train()  # it trains: gradients reach the gates
    model(x).sum().backward()
    assert deep.params["l1_g0"].grad is not None and deep.gates is deep.params


def test_old_module_paths_resolve_to_the_moved_classes():
    import adtn.deep
    import adtn.deep_module

    assert adtn.deep.DeepTN is DeepTN and adtn.deep_module.DeepTNModule is DeepTNModule
    assert adtn.deep.windows is adtn.templates.adtn.windows and "moved" in adtn.deep_module.__doc__.lower()
    module = adtn.compile(build({"out": 4, "in": 4}, depth=2))
    cls = type(module)
    name = (cls.__module__, cls.__qualname__)
    cls.__module__ = "adtn.deep_module"  # pickled with the old class path
    try:
        data = pickle.dumps(module)
    finally:
        cls.__module__, cls.__qualname__ = name
    assert b"adtn.deep_module" in data
    torch.testing.assert_close(pickle.loads(data).dense(), module.dense())


def test_pickling_drops_the_plan_cache():
    for tn in _networks().values():
        tn.apply(torch.randn(3, 8, dtype=torch.float64), "in")
        tn.cost(batch=3, axis="in")
        clone = pickle.loads(pickle.dumps(tn))
        assert isinstance(clone._plans, LRUCache) and not clone._plans
        torch.testing.assert_close(clone.dense(), tn.dense())


def test_an_adtn_save_file_with_the_old_gate_keys_loads(tmp_path):
    torch.manual_seed(3)

    def dense_model() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

    model = dense_model()
    model[0] = adtn.encode(model[0], depth=2)
    model[2] = adtn.encode(model[2], template="tt", rank=2)
    path = tmp_path / "model.pt"
    adtn.save(model, path)
    payload = torch.load(path, weights_only=True)
    # the file as written before the network base: gates under "gates.", no template stamp in the DeepTN JSON
    payload["state_dict"] = {k.replace("0.tn.params.", "0.tn.gates."): v for k, v in payload["state_dict"].items()}
    payload["versions"] = {k.replace("0.tn.params", "0.tn.gates"): v for k, v in payload["versions"].items()}
    entry = payload["layers"]["0"]
    structure = json.loads(entry["structure"])
    structure.pop("meta")
    entry["structure"] = json.dumps(structure)
    assert "0.tn.gates.l0_g0" in payload["state_dict"]
    torch.save(payload, path)
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(adtn.load_into(dense_model(), path)(x), want, rtol=0, atol=0)
        torch.testing.assert_close(adtn.load(path)(x), want, rtol=0, atol=0)

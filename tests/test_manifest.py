"""Portable models: ``adtn.save`` writes plain data, ``adtn.load_into`` rebuilds it on a fresh model."""

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import adtn
from adtn.errors import AdtnError, SchemaError, ShapeError
from adtn.layers import TNLinear

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("tt", "hybrid", "mixed", "kronecker")

NET = """
import sys
import torch
from torch import nn
import adtn

class Net(nn.Module):  # defined only here, in __main__
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.c2 = nn.Conv2d(12, 20, 3, padding=1)
        self.fc = nn.Linear(20 * 6 * 6, 90)
        self.out = nn.Linear(90, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.out(torch.relu(self.fc(x.flatten(1))))

torch.manual_seed(1)
x = torch.randn(2, 3, 6, 6)
folder = sys.argv[1]


def outputs(model):
    # (auto forward, dense forward): "auto" may stream or rebuild (by whether the weight is cached),
    # so the bit-exact comparison runs the rebuilt weight on both sides
    with torch.no_grad():
        auto = model.eval()(x)
        for m in model.modules():
            if isinstance(m, adtn.TNLayer):
                m.forward_mode = "dense"
        return auto, model(x)
"""

SAVE = NET + """
for policy in sys.argv[2:]:
    torch.manual_seed(0)
    model, report = adtn.compress(Net(), policy, budget=0.15, shape="auto")
    searched = [name for name, m in model.named_modules() if getattr(m, "shape_choice", None) is not None]
    assert searched or policy == "mixed", (policy, str(report))  # the shape search ran (not for Tucker-2 / CP)
    adtn.save(model, f"{folder}/{policy}.pt")
    torch.save(outputs(model), f"{folder}/{policy}.out")
"""

LOAD = NET + """
for policy in sys.argv[2:]:
    model = adtn.load_into(Net(), f"{folder}/{policy}.pt").eval()
    (auto, dense), (ref_auto, ref_dense) = outputs(model), torch.load(f"{folder}/{policy}.out")
    assert torch.equal(dense, ref_dense) and torch.allclose(auto, ref_auto, rtol=1e-5, atol=1e-6), policy
    print(policy, sum(p.numel() for p in model.parameters()), "ok")
"""


def run_script(tmp_path, name, text, *args):
    script = tmp_path / name
    script.write_text(textwrap.dedent(text))
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), *args], check=False, env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_save_in_one_process_load_into_another(tmp_path):
    run_script(tmp_path, "save_model.py", SAVE, *POLICIES)
    out = run_script(tmp_path, "load_model.py", LOAD, *POLICIES)
    assert [line.split()[0] for line in out.splitlines() if line.endswith("ok")] == list(POLICIES)
    payload = torch.load(tmp_path / "tt.pt", weights_only=True)  # plain data: no pickled class
    assert payload["format"] == "adtn.model/2" and payload["model_class"] == "__main__.Net"
    assert set(payload["layers"]) == {"c1", "c2", "fc", "out"}
    assert payload["layers"]["fc"]["shape_choice"]["template"] == "tt"
    with pytest.raises(SchemaError, match=r"the model class __main__\.Net cannot be imported here .*load_into"):
        adtn.load(tmp_path / "tt.pt")  # this process's __main__ has no Net


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        shared = nn.Linear(24, 24)
        self.a, self.b = shared, shared  # one module at two places
        self.conv = nn.Conv1d(4, 8, 3, padding=1, bias=False)
        self.deep = nn.Linear(16, 12)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def compressed_block():
    torch.manual_seed(0)
    model = Block()
    model.a = model.b = adtn.encode(model.a, "tt", budget=0.4)
    model.conv = adtn.encode(model.conv, "tucker2", rank=(3, 2))
    model.deep = adtn.encode(model.deep, depth=2)
    return model


def test_load_into_keeps_shared_layers_options_and_outputs():
    model = compressed_block()
    buf = io.BytesIO()
    adtn.save(model, buf)
    buf.seek(0)
    fresh = adtn.load_into(Block(), buf)
    assert fresh.a is fresh.b and isinstance(fresh.a, TNLinear)
    for name in ("a", "conv", "deep"):
        mine, saved = getattr(fresh, name), getattr(model, name)
        assert mine.template == saved.template and mine.template_options == saved.template_options
        assert mine.num_tn_params == saved.num_tn_params and repr(mine) == repr(saved)
        assert torch.equal(mine.weight, saved.weight)
    x = torch.randn(3, 24)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh.conv(torch.randn(1, 4, 5).fill_(0.5)), model.conv(torch.randn(1, 4, 5).fill_(0.5)))
    buf.seek(0)
    whole = adtn.load(buf)  # Block is importable here: the whole model comes back
    assert type(whole) is Block and whole.a is whole.b and torch.equal(whole(x), model(x))


def test_load_into_a_single_layer_and_without_the_pickled_model(tmp_path):
    layer = adtn.encode(nn.Linear(20, 30), "ht", budget=0.3)
    path = tmp_path / "layer.pt"
    adtn.save(layer, path, pickle_model=False)
    fresh = adtn.load_into(nn.Linear(20, 30), path)
    assert isinstance(fresh, TNLinear) and torch.equal(fresh.weight, layer.weight)
    with pytest.raises(SchemaError, match="saved with pickle_model=False; build a fresh torch.nn.Linear and call "
                                          "adtn.load_into"):
        adtn.load(path)


def test_load_into_names_what_does_not_match(tmp_path):
    path = tmp_path / "block.pt"
    adtn.save(compressed_block(), path)

    class Wider(Block):
        def __init__(self):
            super().__init__()
            self.a = self.b = nn.Linear(24, 30)

    with pytest.raises(ShapeError, match=r"layer 'a': the saved layer has out_features=24, the model's has 30"):
        adtn.load_into(Wider(), path)

    class Conv(Block):
        def __init__(self):
            super().__init__()
            self.deep = nn.Conv1d(16, 12, 1)

    with pytest.raises(SchemaError, match=r"layer 'deep': the file holds a TNLinear here, so the model needs an "
                                          r"nn.Linear \(or a TNLinear\), got Conv1d"):
        adtn.load_into(Conv(), path)
    with pytest.raises(SchemaError, match=r"layer 'a': the file has a TN layer here, but Sequential has no such "
                                          r"module; modules: \['0'\]"):
        adtn.load_into(nn.Sequential(nn.Linear(2, 2)), path)

    class Extra(Block):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(24)

    with pytest.raises(SchemaError, match=r"Extra does not match the saved model: missing \['norm.weight'"):
        adtn.load_into(Extra(), path)
    with pytest.raises(AdtnError, match="model must be an nn.Module"):
        adtn.load_into("Block", path)


def test_load_names_files_that_are_not_models(tmp_path):
    graph = tmp_path / "graph.json"
    adtn.templates.get("tt").build({"out": 16, "in": 16}, rank=2).to_json(graph)
    for fn in (adtn.load, lambda p: adtn.load_into(nn.Linear(2, 2), p)):
        with pytest.raises(SchemaError, match=r"graph.json' is not a model file; expected a file written by "
                                              r"adtn.save \(format 'adtn.model/2'\): it is a JSON text"):
            fn(graph)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SchemaError, match="empty.pt' is not a model file.*: it is empty"):
        adtn.load(tmp_path / "empty.pt")
    with pytest.raises(SchemaError, match="missing.pt' does not exist"):
        adtn.load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(SchemaError, match=r"plain.pt': expected a file written by adtn.save .*got None"):
        adtn.load(tmp_path / "plain.pt")


def test_old_format_files_still_load(tmp_path):
    model = compressed_block()
    path = tmp_path / "old.pt"
    torch.save({"format": "adtn.model/1", "layers": {}, "model": model}, path)  # what adtn 0.1 wrote
    x = torch.randn(2, 24)
    assert torch.equal(adtn.load(path)(x), model(x))
    with pytest.raises(SchemaError, match="old.pt' holds pickled objects, not plain data.*load it with adtn.load"):
        adtn.load_into(Block(), path)


def test_load_keeps_tied_weights_tied():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False), nn.Linear(10, 12))
    model[1].weight = model[0].weight  # tied, as a language model's head and embedding
    model[2] = adtn.encode(model[2], "tt", rank=2)
    buf = io.BytesIO()
    adtn.save(model, buf)
    buf.seek(0)
    back = adtn.load(buf)
    assert back[1].weight is back[0].weight and torch.equal(back[0].weight, model[0].weight)
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(back(x), model(x))

"""The deep ADTN: structure and counts, dense() against explicit layer matrices, both executors,
gradients, init scale, serialisation, the declared VGG-16 graphs, and errors that teach."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from adtn.errors import AdtnError, GraphError, SchemaError, ShapeError, TemplateError
from adtn.templates.adtn import DeepTN, DeepTNModule, adtn_params, build, gate_pairs, trace_gates, windows
from adtn.templates.registry import get

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
LAYOUTS = [("brickwall", (0, 1)), ("brickwall", (1, 0)), ("staircase", (0, 1))]
ACTIVATIONS = ["relu", "leaky_relu", None]


def reference(module: DeepTNModule) -> torch.Tensor:
    """The weight from explicit 2^Q x 2^Q layer matrices: kron(I, gate, I) products on v^{⊗Q}."""
    deep = module.deep
    q, n = deep.q, 2**deep.q
    eye = lambda k: torch.eye(2**k, dtype=torch.float64)
    state = torch.zeros(n, dtype=torch.float64)
    state[0] = 1.0  # v^{⊗Q} with v = [1, 0]
    for m, op in enumerate(deep.operators):
        if m and deep.activation == "relu":
            state = torch.relu(state)
        elif m and deep.activation == "leaky_relu":
            state = F.leaky_relu(state, deep.negative_slope)
        layer = eye(q)
        for name in op.nodes_with_role("param"):
            a, b = op.node(name)["on"]
            g = module.params[name].detach().double()
            if g.dim() == 2:  # a boundary gate stores its [:, :, 0, 0] slice
                full = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
                full[:, :, 0, 0] = g
                g = full
            layer = torch.kron(torch.kron(eye(a), g.reshape(4, 4)), eye(q - b - 1)) @ layer
        state = layer @ state
    scale = module.effective_scale().detach().double()
    return (scale * state[: deep.size]).reshape(tuple(deep.axes.values()))


def params_of(module: DeepTNModule) -> dict[str, torch.Tensor]:
    return {f"params.{k}": v.detach().clone().requires_grad_() for k, v in module.params.items()}


# ---------------------------------------------------------------------- structure and counts
def test_vgg16_counts_are_exact():
    fc1 = build({"out": 4096, "in": 512})
    fc2 = build({"out": 4096, "in": 4096})
    assert (fc1.q, fc1.num_params) == (21, 200)
    assert (fc2.q, fc2.num_params) == (24, 224)
    assert fc1.num_params + fc2.num_params == 424
    boundary = [n for _, n in fc2.gates() if fc2.operators[0].shape(n) == (2, 2)]
    assert len(boundary) == 12 and len(fc2.gates()) == 23


@pytest.mark.parametrize("axes", [{"out": 4, "in": 2}, {"out": 5, "in": 7}, {"out": 64, "in": 64},
                                  {"out": 256, "in": 784}, {"out": 8, "in": 4, "kh": 3, "kw": 3}])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("layout,order", LAYOUTS)
def test_formula_matches_structure(axes, depth, layout, order):
    for learn_scale in (False, True):
        deep = build(axes, depth=depth, layout=layout, column_order=order, learn_scale=learn_scale)
        assert adtn_params(axes, depth=depth, layout=layout, column_order=order, learn_scale=learn_scale) \
            == deep.num_params
        assert get("adtn").formula(axes, depth=depth, layout=layout, column_order=order) \
            == deep.num_params - learn_scale
        module = DeepTNModule(deep, dtype=torch.float64)
        assert sum(p.numel() for p in module.parameters()) == deep.num_params


def test_learn_scale_adds_one_parameter():
    axes = {"out": 16, "in": 16}
    assert build(axes, learn_scale=True).num_params == build(axes).num_params + 1
    module = DeepTNModule(build(axes, learn_scale=True))
    assert isinstance(module.gain, torch.nn.Parameter) and module.gain.item() == 1.0


def test_layouts_and_windows():
    assert gate_pairs(5) == [(0, 1), (2, 3), (1, 2), (3, 4)]
    assert gate_pairs(5, column_order=(1, 0)) == [(1, 2), (3, 4), (0, 1), (2, 3)]
    assert gate_pairs(4, "staircase") == [(0, 1), (1, 2), (2, 3)]
    for layout, order in LAYOUTS:
        for q in (2, 3, 7, 24):
            pairs = gate_pairs(q, layout, order)
            for width in (2, 3, 5, 8):
                wins = windows(pairs, q, width)
                assert sorted(k for _, _, idx in wins for k in idx) == list(range(len(pairs)))
                for lo, hi, idx in wins:
                    assert all(lo <= pairs[k][0] and pairs[k][1] < hi for k in idx)
                    assert hi - lo <= width + 1 or len(idx) == 1


def test_registry_and_names():
    template = get("adtn")
    assert template.kinds == ("linear", "conv") and template.build is build
    deep = build({"out": 8, "in": 16}, depth=2)
    assert [op.name for op in deep.operators] == ["l0", "l1"]
    assert list(deep.operators[1].outputs) == ["out", "in", "prev"]
    assert list(deep.operators[0].outputs) == ["state"]
    module = DeepTNModule(deep)
    assert "l0_g3" in module.params and "l1_g3" in module.params
    assert all(not isinstance(trace_gates(op, m, deep.q), str) for m, op in enumerate(deep.operators))


# ---------------------------------------------------------------------- dense() against the reference
@pytest.mark.parametrize("axes", [{"out": 8, "in": 16}, {"out": 5, "in": 7}, {"out": 4, "in": 2, "kh": 3, "kw": 1}])
@pytest.mark.parametrize("layout,order", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("executor", ["fused", "planner"])
def test_dense_matches_explicit_layer_matrices(axes, layout, order, activation, executor):
    for depth in (1, 2, 3):
        deep = build(axes, depth=depth, layout=layout, column_order=order, activation=activation,
                     negative_slope=0.2)
        module = DeepTNModule(deep, dtype=torch.float64, executor=executor, window=3 + depth)
        assert module.executor == executor
        w = module.dense()
        assert w.shape == tuple(axes.values())
        torch.testing.assert_close(w, reference(module), rtol=0, atol=1e-10)


@pytest.mark.parametrize("width", [2, 3, 4, 5, 6])
def test_fused_matches_planner(width):
    deep = build({"out": 64, "in": 64}, depth=3, activation="leaky_relu")
    fused = DeepTNModule(deep, dtype=torch.float64, window=width, seed=1)
    planner = DeepTNModule(deep, dtype=torch.float64, executor="planner", seed=1)
    assert fused.executor == "fused"
    torch.testing.assert_close(fused.dense(), planner.dense(), rtol=1e-12, atol=1e-12)
    grads = []
    for module in (fused, planner):
        module.zero_grad()
        (module.dense() ** 2).sum().backward()
        grads.append(torch.cat([g.grad.reshape(-1) for g in module.params.values()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_chunked_backward_matches_planner(monkeypatch):
    import adtn.templates.adtn.kernels as dm

    monkeypatch.setattr(dm, "_CHUNK", 64)  # many chunks in every hand-written backward branch
    monkeypatch.setattr(dm, "_ROWS", 4)
    deep = build({"out": 64, "in": 32}, depth=2, activation="leaky_relu")
    planner = DeepTNModule(deep, dtype=torch.float64, executor="planner", seed=4)
    target = torch.randn(64, 32, dtype=torch.float64)
    (planner.dense() * target).sum().backward()
    for width in (2, 4, 5, 6):  # 5 and 6 reach the thin-product branch of _MiddleMatmul
        fused = DeepTNModule(deep, dtype=torch.float64, window=width, seed=4)
        (fused.dense() * target).sum().backward()
        for name, gate in planner.params.items():
            torch.testing.assert_close(fused.params[name].grad, gate.grad, rtol=1e-9, atol=1e-12)


def test_scale_is_fixed_buffer_or_learnt_gain():
    axes = {"out": 32, "in": 64}
    module = DeepTNModule(build(axes, depth=2), dtype=torch.float64)
    assert "scale" in dict(module.named_buffers()) and module.gain is None
    assert abs(float(module.dense().detach().std()) - 1 / 8) < 1e-9  # fan_in 64: std 1/sqrt(64) at init
    fixed = DeepTNModule(build(axes, scale=2.0), dtype=torch.float64)
    assert fixed.scale.item() == 2.0
    learnt = DeepTNModule(build(axes, depth=2, learn_scale=True), dtype=torch.float64, seed=3)
    w0 = learnt.dense().detach()
    with torch.no_grad():
        learnt.gain.fill_(3.0)
    torch.testing.assert_close(learnt.dense(), 3 * w0)
    learnt.dense().sum().backward()
    assert learnt.gain.grad is not None


def test_conv_fan_in_and_crop():
    axes = {"out": 6, "in": 4, "kh": 3, "kw": 3}  # 216 entries padded to 256
    module = DeepTNModule(build(axes, depth=2), dtype=torch.float64)
    assert module.deep.q == 8 and not module.deep.exact and module.deep.fan_in == 36
    w = module.dense()
    assert w.shape == (6, 4, 3, 3)
    assert abs(float(w.detach().std()) - 1 / 6) < 1e-9


# ---------------------------------------------------------------------- apply
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("executor", ["fused", "planner"])
def test_apply_matches_dense(depth, executor):
    module = DeepTNModule(build({"out": 16, "in": 32}, depth=depth), dtype=torch.float64, executor=executor)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    assert module._streams(("in",)) == (depth == 1)
    torch.testing.assert_close(module.apply(x), x @ module.dense().T)
    torch.testing.assert_close(module(x), module.apply(x, "in"))
    y = torch.randn(7, 16, dtype=torch.float64)
    torch.testing.assert_close(module.apply(y, "out"), y @ module.dense())


def test_apply_conv_and_padded_axes():
    module = DeepTNModule(build({"out": 6, "in": 4, "kh": 3, "kw": 3}), dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(module.apply(x, "in"), torch.einsum("bi,oihw->bohw", x, module.dense()))
    with pytest.raises(ShapeError, match=r"must end with the sizes of axis \(in=4\)"):
        module.apply(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(GraphError, match="has no axis 'rows'"):
        module.apply(x, "rows")
    with pytest.raises(AdtnError, match="does not match the module's"):
        module.apply(x.float())


# ---------------------------------------------------------------------- gradients
def _away_from_kinks(module: DeepTNModule, margin: float = 1e-3) -> bool:
    deep = module.deep
    with torch.no_grad():
        state = module._fused(0, None, None) if module.executor == "fused" else module._planned(0, None, None)
        for m in range(1, deep.depth - 1):
            state = module._fused(m, F.leaky_relu(state, deep.negative_slope), None)
    return bool(state.abs().min() > margin)


@pytest.mark.parametrize("executor", ["fused", "planner"])
def test_gradcheck_dense_and_apply(executor):
    deep = build({"out": 4, "in": 8}, depth=3, activation="leaky_relu", negative_slope=0.1)
    seed = next(s for s in range(50) if _away_from_kinks(DeepTNModule(deep, dtype=torch.float64, seed=s)))
    module = DeepTNModule(deep, dtype=torch.float64, seed=seed, executor=executor, window=3)
    names = list(params_of(module))

    def dense(*gates):
        return functional_call(module, dict(zip(names, gates)), ())

    assert torch.autograd.gradcheck(dense, tuple(params_of(module).values()))
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    def apply(x, *gates):
        return functional_call(module, dict(zip(names, gates)), (x,))

    assert torch.autograd.gradcheck(apply, (x, *params_of(module).values()))
    one = DeepTNModule(build({"out": 4, "in": 8}), dtype=torch.float64, executor=executor)
    names1 = list(params_of(one))
    assert torch.autograd.gradcheck(lambda x, *g: functional_call(one, dict(zip(names1, g)), (x,)),
                                    (x, *params_of(one).values()))


def test_checkpoint_gives_the_same_gradients():
    deep = build({"out": 32, "in": 32}, depth=3)
    plain = DeepTNModule(deep, dtype=torch.float64, seed=2)
    ckpt = DeepTNModule(deep, dtype=torch.float64, seed=2, checkpoint=True)
    for module in (plain, ckpt):
        (module.dense() ** 2).sum().backward()
    for name in plain.params:
        torch.testing.assert_close(plain.params[name].grad, ckpt.params[name].grad)


def test_deep_init_stays_at_fan_in_scale():
    module = DeepTNModule(build({"out": 1024, "in": 1024}, depth=8), seed=0)
    with torch.no_grad():
        w = module.dense()
    target = 1 / math.sqrt(1024)
    assert torch.isfinite(w).all()
    assert target / 10 < float(w.std()) < target * 10


# ---------------------------------------------------------------------- module plumbing
def test_state_dict_deepcopy_double_and_repr():
    deep = build({"out": 16, "in": 16}, depth=2, learn_scale=True)
    a = DeepTNModule(deep, seed=0)
    b = DeepTNModule(deep, seed=1)
    assert not torch.equal(a.dense(), b.dense())
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.dense(), b.dense())
    assert set(a.state_dict()) >= {"scale", "gain", "params.l0_g0", "params.l1_g0"}
    c = copy.deepcopy(a)
    torch.testing.assert_close(c.dense(), a.dense())
    d = copy.deepcopy(a).double()
    assert d.dense().dtype == torch.float64 and d.dtype == torch.float64
    torch.testing.assert_close(d.dense().float(), a.dense(), rtol=1e-5, atol=1e-6)
    text = repr(a)
    assert "depth=2" in text and "activation=relu" in text and f"params={deep.num_params}" in text
    cost = a.cost()
    assert cost.params == deep.num_params and cost.flops > 0 and cost.largest_intermediate == 256
    assert a.cost(batch=4, axis="in").flops > cost.flops
    planner_cost = DeepTNModule(build({"out": 16, "in": 16}), executor="planner").cost(batch=4, axis="in")
    assert planner_cost.largest_intermediate < 256


def test_init_from_dict_and_errors():
    deep = build({"out": 4, "in": 4})
    tensors = {name: torch.ones(deep.operators[0].shape(name)) for _, name in deep.gates()}
    module = DeepTNModule(deep, tensors, dtype=torch.float64)
    assert torch.equal(module.params["l0_g0"], torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(AdtnError, match=r"missing gates \['l0_g2'\]"):
        DeepTNModule(deep, {k: v for k, v in tensors.items() if k != "l0_g2"})
    with pytest.raises(ShapeError, match=r"gate 'l0_g0': expected shape \(2, 2\), got \(2, 2, 2, 2\)"):
        DeepTNModule(deep, {**tensors, "l0_g0": torch.ones(2, 2, 2, 2)})
    with pytest.raises(AdtnError, match="must be 'identity', a dict"):
        DeepTNModule(deep, "orthogonal")
    with pytest.raises(AdtnError, match=r"unknown executor 'gpu'; valid: \['auto', 'fused', 'planner'\]"):
        DeepTNModule(deep, executor="gpu")
    with pytest.raises(AdtnError, match="window must be an integer >= 2"):
        DeepTNModule(deep, window=1)
    with pytest.raises(AdtnError, match="needs a DeepTN"):
        DeepTNModule(deep.operators[0])


# ---------------------------------------------------------------------- serialisation and graphs/
def test_json_round_trip(tmp_path):
    deep = build({"out": 6, "in": 10}, depth=3, activation="leaky_relu", layout="staircase", learn_scale=True)
    again = DeepTN.from_json(deep.to_json())
    assert again == deep and again.num_params == deep.num_params
    deep.save(tmp_path / "d.json")
    assert DeepTN.load(tmp_path / "d.json") == deep
    assert json.loads(deep.to_json())["schema"] == "adtn.deep/1"
    with pytest.raises(SchemaError, match="must have schema 'adtn.deep/1', got 'adtn.graph/1'"):
        DeepTN.from_dict(deep.operators[0].to_dict())
    with pytest.raises(SchemaError, match="no such file"):
        DeepTN.load(tmp_path / "missing.json")


def test_structure_is_validated():
    deep = build({"out": 8, "in": 8}, depth=2)
    with pytest.raises(GraphError, match="operator 0 .* has no axis 'prev'"):
        DeepTN(list(reversed(deep.operators)), deep.axes)
    with pytest.raises(ShapeError, match="need Q = 5 legs, the operators have 6"):
        DeepTN(deep.operators, {"out": 4, "in": 8})
    with pytest.raises(GraphError, match="needs at least one operator"):
        DeepTN([], deep.axes)
    with pytest.raises(GraphError, match=r"last operator's axes hold \{'out': 8, 'in': 8\}"):
        DeepTN(deep.operators, {"out": 16, "in": 4})


@pytest.mark.parametrize("file", ["adtn_vgg16_fc1.json", "adtn_vgg16_fc2.json", "adtn_mnist_fc1_d3.json"])
def test_declared_graphs_match_their_builder(file):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_adtn", GRAPHS / "make_adtn.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    assert DeepTN.load(GRAPHS / file) == make.build(file)


def test_vgg16_graphs_total_424():
    fc1 = DeepTN.load(GRAPHS / "adtn_vgg16_fc1.json")
    fc2 = DeepTN.load(GRAPHS / "adtn_vgg16_fc2.json")
    assert (fc1.axes, fc2.axes) == ({"out": 4096, "in": 512}, {"out": 4096, "in": 4096})
    assert (fc1.num_params, fc2.num_params) == (200, 224)
    assert fc1.num_params + fc2.num_params == 424


def test_draw(tmp_path):
    pytest.importorskip("matplotlib")
    build({"out": 4, "in": 8}, depth=2).draw(tmp_path / "adtn.png")
    assert (tmp_path / "adtn.png").stat().st_size > 0


# ---------------------------------------------------------------------- errors that teach
def test_bad_options():
    axes = {"out": 8, "in": 8}
    with pytest.raises(TemplateError, match=r"unknown layout 'ring'; valid: \['brickwall', 'staircase'\]"):
        build(axes, layout="ring")
    with pytest.raises(TemplateError, match=r"unknown activation 'tanh'; valid: \['relu', 'leaky_relu', None\]"):
        build(axes, activation="tanh")
    with pytest.raises(TemplateError, match=r"depth must be a positive integer \(the number of gate layers\), got 0"):
        build(axes, depth=0)
    with pytest.raises(ShapeError, match="axis 'in' must have a positive integer size, got 0"):
        build({"out": 8, "in": 0})
    with pytest.raises(TemplateError, match=r"column_order must be one of \[\(0, 1\), \(1, 0\)\]"):
        build(axes, column_order=(0, 2))
    with pytest.raises(TemplateError, match="scale must be a positive finite number"):
        build(axes, scale=-1.0)
    with pytest.raises(TemplateError, match="reserved for the state, got axis 'prev'"):
        build({"out": 8, "prev": 8})
    with pytest.raises(ShapeError, match="at least 3 entries"):
        build({"out": 2, "in": 1})
    with pytest.raises(TemplateError, match="unknown layout"):
        adtn_params(axes, layout="ring")


# ---------------------------------------------------------------------- the last operator split (apply_split)
@pytest.mark.parametrize("axes", [{"out": 16, "in": 32}, {"out": 64, "in": 64}, {"out": 2, "in": 128}])
@pytest.mark.parametrize("layout,order", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_apply_split_matches_dense(axes, layout, order, activation):
    for depth in (2, 3):
        deep = build(axes, depth=depth, layout=layout, column_order=order, activation=activation,
                     negative_slope=0.2)
        module = DeepTNModule(deep, dtype=torch.float64, window=3 + depth, seed=depth)
        assert module._split()[3] == int(math.log2(axes["out"]))
        x = torch.randn(5, axes["in"], dtype=torch.float64)
        torch.testing.assert_close(module.apply_split(x), x @ module.dense().T, rtol=1e-10, atol=1e-10)


def test_split_keeps_only_the_gates_near_the_boundary_on_the_state():
    module = DeepTNModule(build({"out": 64, "in": 64}, depth=2), dtype=torch.float64)
    mid, _, _, q_out = module._split()
    assert q_out == 6
    # brick wall: the crossing gate (5, 6) and the first-column gates it follows, (4, 5) and (6, 7)
    assert sorted(a for _, _, gates in mid for _, a in gates) == [4, 5, 6]
    full, split = module.split_cost(8)
    assert split < full
    staircase = DeepTNModule(build({"out": 64, "in": 64}, depth=2, layout="staircase"), dtype=torch.float64)
    mid = staircase._split()[0]
    assert sorted(a for _, _, gates in mid for _, a in gates) == list(range(6))  # every gate before (5, 6)


def test_split_does_not_apply_to_depth_one_padded_or_planner():
    assert DeepTNModule(build({"out": 16, "in": 32}), dtype=torch.float64)._split() is None
    assert DeepTNModule(build({"out": 5, "in": 7}, depth=2), dtype=torch.float64)._split() is None
    assert DeepTNModule(build({"out": 16, "in": 32}, depth=2), dtype=torch.float64,
                        executor="planner")._split() is None


def _linear_layer(depth: int, dtype=torch.float64, **options):
    from adtn.layers import TNLinear

    return TNLinear(32, 16, template="adtn", depth=depth, dtype=dtype, **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_deep_linear_runs_the_split_and_matches_f_linear(dtype):
    layer = _linear_layer(2, dtype)
    x = torch.randn(2, 4, 32, dtype=dtype, requires_grad=True)
    assert layer._split_pays(8) and not layer._split_pays(12)  # the one-sided gates' passes grow with the batch
    y, ref = layer(x), F.linear(x, layer.weight, layer.bias)
    tol = {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol * float(ref.detach().abs().max()))
    g = torch.randn_like(y)
    params = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10 * float(b.abs().max()))
    layer.eval()
    with torch.no_grad():
        assert not layer._split_pays(8)  # inference rebuilds the weight once and reuses it
        torch.testing.assert_close(layer(x), ref.detach(), rtol=tol, atol=tol * float(ref.detach().abs().max()))
        assert layer._cached()


def test_gradcheck_deep_linear_split():
    from adtn.layers import TNLinear

    deep = build({"out": 8, "in": 16}, depth=2, activation="leaky_relu", negative_slope=0.1)
    seed = next(s for s in range(50) if _away_from_kinks(DeepTNModule(deep, dtype=torch.float64, seed=s)))
    layer = TNLinear(16, 8, structure=deep, dtype=torch.float64)
    layer.tn.load_state_dict(DeepTNModule(deep, dtype=torch.float64, seed=seed).state_dict())
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    assert layer._split_pays(3)
    keys, values = zip(*[(k, p.detach().clone().requires_grad_(True)) for k, p in layer.named_parameters()])
    assert torch.autograd.gradcheck(lambda x, *p: functional_call(layer, dict(zip(keys, p)), (x,)), (x, *values))


def test_pooled_states_match_the_planner(monkeypatch):
    from adtn.plan import WORKSPACE

    monkeypatch.setattr(WORKSPACE, "min_bytes", 0)  # every state and gradient from the pool
    deep = build({"out": 32, "in": 64}, depth=3, activation="leaky_relu")
    planner = DeepTNModule(deep, dtype=torch.float64, executor="planner", seed=5)
    fused = DeepTNModule(deep, dtype=torch.float64, seed=5)
    targets = [torch.randn(32, 64, dtype=torch.float64) for _ in range(2)]
    for module in (planner, fused):
        w1, w2 = module.dense(), module.dense()  # two decodes alive at once: no buffer is shared
        ((w1 * targets[0]).sum() + (w2 ** 2 * targets[1]).sum()).backward()
    for name, gate in planner.params.items():
        torch.testing.assert_close(fused.params[name].grad, gate.grad, rtol=1e-9, atol=1e-12)
    x = torch.randn(4, 64, dtype=torch.float64)
    for _ in range(2):  # the second pass reuses the first one's released buffers
        torch.testing.assert_close(fused.apply_split(x), x @ planner.dense().T, rtol=1e-10, atol=1e-10)


def test_torch_func_grad_through_a_deep_layer():
    layer = _linear_layer(2)
    x = torch.randn(3, 32, dtype=torch.float64)
    params = {k: p.detach() for k, p in layer.named_parameters()}
    grads = torch.func.grad(lambda p: functional_call(layer, p, (x,)).pow(2).sum())(params)
    layer(x).pow(2).sum().backward()
    for k, p in layer.named_parameters():
        torch.testing.assert_close(grads[k], p.grad)

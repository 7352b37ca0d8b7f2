"""``torch.compile(fullgraph=True)`` traces every TN layer and compressed model: no graph break, no
networkx inside forward, one graph for every batch size, the eager numbers and gradients."""

import pytest
import torch
from torch import nn

import adtn
from adtn.layers import TNConv1d, TNConv2d, TNLinear
from adtn.models import fc2, lenet5, resnet
from adtn.tracing import COMPILE_BATCH


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(module: nn.Module, y: torch.Tensor) -> list[torch.Tensor]:
    module.zero_grad()
    y.square().sum().backward()
    return [p.grad.clone() for p in module.parameters() if p.requires_grad]


def check_compiled(module: nn.Module, inputs: list[torch.Tensor], grad: bool = True) -> None:
    """fullgraph compile (dynamo errors on any graph break) and compare outputs and gradients with eager."""
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    for x in inputs:
        ref = module(x)
        y = compiled(x)
        scale = float(ref.abs().max()) + 1e-6
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5 * scale)
        if grad:
            want, got = _grads(module, ref), _grads(module, y)
            assert got and all(g.abs().sum() > 0 for g in got if g.numel() > 4) or not got
            # float32 sums in another order (the compiled graph may run another form): tolerances
            # relative to the largest gradient, since a tiny gradient may be mostly cancellation
            top = max(float(g.abs().max()) for g in want) + 1e-6
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * top)


def _sizing(name: str) -> dict:
    return {"depth": 2} if name == "adtn" else {"budget": 0.5}


@pytest.mark.parametrize("forward", ["auto", "direct"])
@pytest.mark.parametrize("name", adtn.templates.names())
def test_every_template_linear_compiles(name, forward):
    layer = TNLinear(24, 20, template=name, forward=forward, **_sizing(name))
    check_compiled(layer, [torch.randn(3, 24), torch.randn(2, 5, 24)])


@pytest.mark.parametrize("forward", ["auto", "direct"])
@pytest.mark.parametrize("name", adtn.templates.names())
def test_every_template_conv2d_compiles(name, forward):
    layer = TNConv2d(8, 6, 3, padding=1, template=name, forward=forward, **_sizing(name))
    check_compiled(layer, [torch.randn(2, 8, 6, 6), torch.randn(3, 8, 6, 6)])


@pytest.mark.parametrize("name", ["tucker2", "cp", "kronecker", "tt"])
def test_conv1d_and_unbatched_compile(name):
    conv1 = TNConv1d(8, 6, 3, padding=1, template=name, forward="direct", budget=0.5)
    check_compiled(conv1, [torch.randn(2, 8, 10), torch.randn(8, 10)])
    conv2 = TNConv2d(8, 6, 3, padding=1, template=name, forward="direct", budget=0.5)
    check_compiled(conv2, [torch.randn(8, 6, 6)], grad=False)


def test_deep_adtn_depth_one_streams_under_compile():
    """A depth-1 ADTN on power-of-two axes streams the batch through its gates (the planner)."""
    layer = TNLinear(16, 16, template="adtn", depth=1, forward="direct")
    assert layer.choose_forward((4, 16)).form == "stream"
    check_compiled(layer, [torch.randn(4, 16), torch.randn(7, 16)])


def test_eval_mode_compiles_without_the_weight_cache():
    layer = TNLinear(24, 20, template="tt", budget=0.5).eval()
    with torch.no_grad():
        layer.dense_weight()  # cached eagerly; the compiled graph rebuilds it (no Python-side cache)
        check_compiled(layer, [torch.randn(3, 24), torch.randn(9, 24)], grad=False)


def test_compile_decides_for_the_nominal_batch():
    """Under compile one choice serves every batch size: the one for COMPILE_BATCH rows."""
    layer = TNLinear(24, 20, template="tt", budget=0.5)
    seen = []

    def spy(key, cached):
        seen.append(key)
        return TNLinear._decide(layer, key, cached)

    layer._decide = spy
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    compiled(torch.randn(3, 24))
    compiled(torch.randn(5, 24))
    assert seen and set(seen) == {(COMPILE_BATCH,)}


POLICIES = ["hybrid", "mixed", "tt", {"*conv*": "tucker2", "*fc*": "tt", "*": "cp"}]
MODELS = {
    "lenet5": (lenet5, (1, 28, 28)),
    "fc2": (lambda: fc2(64, 32), (64,)),
    "resnet20": (lambda: resnet(20, width=4), (3, 8, 8)),
}


# resnet20 compiles in ~3 s per batch size on 2 cores: two policies (fast conv forms, and a dict
# mixing a chain, Tucker-2 and CP) keep this file under a minute
CASES = [(m, p) for m in ("lenet5", "fc2") for p in POLICIES] + [("resnet20", POLICIES[1]), ("resnet20", POLICIES[3])]


@pytest.mark.parametrize(("model", "policy"), CASES,
                         ids=[f"{m}-{p if isinstance(p, str) else 'dict'}" for m, p in CASES])
def test_compressed_models_compile(model, policy):
    make, shape = MODELS[model]
    compressed, _ = adtn.compress(make(), policy, budget=0.3, init="random")
    check_compiled(compressed, [torch.randn(2, *shape), torch.randn(3, *shape)])


@pytest.mark.parametrize("make", [lambda: TNLinear(8, 6, template="tt", rank=2, forward="direct", dtype=torch.float64),
                                  lambda: TNConv2d(4, 3, 3, template="tucker2", rank=2, forward="direct",
                                                   dtype=torch.float64)], ids=["tt_linear", "tucker2_conv"])
def test_compiled_gradients_pass_gradcheck(make):
    layer = make()
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    x = torch.randn((2, 8) if isinstance(layer, TNLinear) else (1, 4, 4, 4), dtype=torch.float64, requires_grad=True)
    params = list(layer.tn.parameters())

    def f(x, *tensors):
        return torch.func.functional_call(layer, dict(zip([f"tn.{n}" for n, _ in layer.tn.named_parameters()],
                                                          tensors)), (x,))

    assert torch.autograd.gradcheck(lambda x: compiled(x), (x,))
    assert torch.autograd.gradcheck(torch.compile(f, fullgraph=True, backend="eager"), (x, *params))


def test_changing_the_forward_mode_recompiles():
    """The compiled graph guards on ``forward_mode``: a layer switched to dense after compiling is traced again."""
    from torch._dynamo.testing import CompileCounter

    layer = TNLinear(24, 20, template="tt", rank=2, forward="direct")
    counter = CompileCounter()
    compiled = torch.compile(layer, fullgraph=True, backend=counter)
    x = torch.randn(3, 24)
    compiled(x)
    compiled(x)
    assert counter.frame_count == 1
    layer.forward_mode = "dense"
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 2
    assert ((COMPILE_BATCH,), False, "direct") in layer._choices


def test_tn_module_apply_and_dense_compile():
    from adtn.testing import tt_chain

    module = adtn.compile(tt_chain((2, 3, 4), rank=2))
    apply = torch.compile(lambda x: module.apply(x, "in"), fullgraph=True, backend="eager")
    dense = torch.compile(lambda: module.dense(), fullgraph=True, backend="eager")
    for batch in (3, 5):
        x = torch.randn(batch, 24)
        torch.testing.assert_close(apply(x), module.apply(x, "in"))
    torch.testing.assert_close(dense(), module.dense())


def test_trace_handles_name_each_copy():
    """The planning functions torch.compile runs in plain Python receive a module's handle (an int,
    a constant to dynamo on every torch version; torch 2.11 refused a module there). A copy or an
    unpickled module gets its own handle, so no copy plans with another's caches."""
    import copy
    import io

    from adtn.tracing import by_handle

    layer = adtn.encode(nn.Linear(16, 12), "tt", rank=2)
    twin = copy.deepcopy(layer)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for module in (layer, twin, loaded):
        for m in (module, module.tn):
            assert isinstance(m._trace_handle, int) and by_handle(m._trace_handle) is m
    assert len({m._trace_handle for m in (layer, twin, loaded)}) == 3
    x = torch.randn(3, 16)
    torch.testing.assert_close(loaded(x), layer(x))

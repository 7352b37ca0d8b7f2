import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adtn
from adtn.api import encode
from adtn.errors import AdtnError, RankError, ShapeError, TemplateError
from adtn.layers import TNConv1d, TNConv2d, TNLinear
from adtn.templates import TEMPLATES, Template, get, names
from adtn.testing import devices

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def size_options(name: str, kind: str) -> dict:
    """The smallest sensible size for each template: rank 2, or depth 1."""
    params = inspect.signature(get(name).build).parameters
    opts = {"rank": 2} if "rank" in params else {"depth": 1} if "depth" in params else {}
    if name == "semi_tucker" and kind == "conv":
        opts["compress"] = ("out", "in")  # kernel sizes 3 do not divide by t=2
    return opts


def torch_layer(which: str, dtype=torch.float32, small: bool = False) -> nn.Module:
    if which == "linear":
        return nn.Linear(16, 8, dtype=dtype) if small else nn.Linear(64, 48, dtype=dtype)
    if which == "conv":
        return nn.Conv2d(4, 6, 3, padding=1, dtype=dtype) if small else nn.Conv2d(16, 32, 3, padding=1, dtype=dtype)
    if which == "conv_strided":
        return nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, dtype=dtype)
    return nn.Conv1d(8, 12, 3, stride=2, padding=1, dtype=dtype)


def kind_of(which: str) -> str:
    return "linear" if which == "linear" else "conv"


def input_for(which: str, dtype=torch.float32, small: bool = False) -> torch.Tensor:
    if which == "linear":
        return torch.randn(3, 16 if small else 64, dtype=dtype)
    if which == "conv1d":
        return torch.randn(2, 8, 11, dtype=dtype)
    return torch.randn(2, 4 if small else 16, 5 if small else 9, 5 if small else 9, dtype=dtype)


def reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The torch functional op with the layer's rebuilt weight."""
    w, b = layer.weight, layer.bias
    if isinstance(layer, TNLinear):
        return F.linear(x, w, b)
    conv = F.conv1d if isinstance(layer, TNConv1d) else F.conv2d
    pad = layer.padding
    return conv(x, w, b, stride=layer.stride, padding=pad, dilation=layer.dilation)


def skip_unless_fits(name: str, which: str) -> None:
    if kind_of(which) not in get(name).kinds:
        pytest.skip(f"template {name!r} does not fit {kind_of(which)} weights")


FAST = {"tucker2": "tucker2", "tucker": "tucker2", "cp": "cp", "kronecker": "kronecker"}


# ---------------------------------------------------------------------- every template, every mode
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("forward", ["dense", "direct", "auto"])
@pytest.mark.parametrize("which", ["linear", "conv", "conv_strided", "conv1d"])
@pytest.mark.parametrize("name", names())
def test_output_equals_functional_op_with_rebuilt_weight(name, which, forward, dtype):
    skip_unless_fits(name, which)
    layer = encode(torch_layer(which, dtype), name, init="random", forward=forward,
                   **size_options(name, kind_of(which)))
    x = input_for(which, dtype)
    with torch.no_grad():
        y, ref = layer(x), reference(layer, x)
    assert y.shape == ref.shape and y.dtype == dtype
    torch.testing.assert_close(y, ref, rtol=TOL[dtype], atol=TOL[dtype] * float(ref.abs().max()))
    choice = layer.choose_forward(tuple(x.shape))
    if forward == "dense":
        assert choice.form == "dense"
    elif forward == "direct" and which != "linear" and name in FAST:
        assert choice.form == FAST[name]  # the conv format's fast form runs


@pytest.mark.parametrize("forward", ["dense", "direct"])
@pytest.mark.parametrize("which", ["linear", "conv"])
@pytest.mark.parametrize("name", names())
def test_gradcheck_float64(name, which, forward):
    skip_unless_fits(name, which)
    layer = encode(torch_layer(which, torch.float64, small=True), name, init="random", forward=forward,
                   **size_options(name, kind_of(which)))
    x = input_for(which, torch.float64, small=True).requires_grad_(True)
    keys, values = zip(*[(k, p.detach().clone().requires_grad_(True)) for k, p in layer.named_parameters()])

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(keys, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *values), eps=1e-6, atol=1e-6)


def test_kronecker_with_both_factors_wide_runs_unfold_not_the_fast_form():
    conv = nn.Conv2d(8, 8, 4, padding=1)
    layer = encode(conv, "kronecker", rank=2, factors=((2, 2, 2, 2), (4, 4, 2, 2)), init="random", forward="direct")
    x = torch.randn(2, 8, 7, 7)
    assert layer.choose_forward(tuple(x.shape)).form == "unfold"
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)


def test_full_tucker_conv_folds_spatial_factors_into_the_fast_form():
    layer = encode(nn.Conv2d(8, 6, 3, padding=1), "tucker", rank=2, init="random", forward="direct")
    x = torch.randn(2, 8, 6, 6)
    assert "u_kh" in layer.tn.params and layer.choose_forward(tuple(x.shape)).form == "tucker2"
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- forward-mode choice
def test_auto_streams_when_clearly_cheaper_and_rebuilds_when_not():
    layer = TNLinear(4096, 4096, template="tt", rank=4)
    small, big = layer.choose_forward((1, 4096)), layer.choose_forward((4096, 4096))
    assert small.mode == "direct" and small.direct_cost * 10 < small.dense_cost
    assert big.mode == "direct"  # the chain executor streams a rank-4 TT faster than dense even at batch 4096
    wide = TNLinear(4096, 4096, template="tt", rank=64)
    big = wide.choose_forward((4096, 4096))
    assert big.mode == "dense" and big.dense_cost < big.direct_cost
    assert layer._choices  # cached per shape
    assert layer.choose_forward((1, 4096)) is small


def test_deep_adtn_past_depth_one_always_rebuilds():
    if "adtn" not in names():
        pytest.skip("template 'adtn' not registered")
    layer = TNLinear(64, 64, template="adtn", depth=2, forward="auto")
    assert layer.choose_forward((1, 64)).mode == "dense"


def test_a_cached_eval_weight_makes_rebuild_free():
    layer = TNLinear(256, 256, template="tt", rank=8)
    train = layer.choose_forward((64, 256))
    layer.eval()
    with torch.no_grad():
        layer.weight  # noqa: B018 - builds the cache
        cached = layer.choose_forward((64, 256))
    assert cached.dense_cost < train.dense_cost


# ---------------------------------------------------------------------- eval cache
@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_eval_cache_is_invalidated_by_an_optimizer_step(optimizer):
    layer = TNLinear(64, 48, template="tt", rank=3, forward="dense")
    x = torch.randn(5, 64)
    layer.eval()
    with torch.no_grad():
        w1 = layer.weight
        assert layer.weight is w1  # cached
        d1 = layer.tn.dense()
        assert layer.tn.dense() is d1  # TNModule's own eval cache
        y1 = layer(x)
    opt = optimizer(layer.parameters(), lr=0.1)
    layer(x).pow(2).sum().backward()  # eval mode with autograd: no cache, gradients flow
    opt.step()
    with torch.no_grad():
        w2 = layer.weight
        assert w2 is not w1 and not torch.equal(w1, w2)
        assert layer.tn.dense() is not d1
        torch.testing.assert_close(layer(x), F.linear(x, layer.tn.dense(), layer.bias))
        assert not torch.equal(layer(x), y1)
    layer.train()
    with torch.no_grad():
        assert layer.weight is not layer.weight  # never cached in train mode


def test_eval_cache_is_invalidated_by_load_state_dict():
    layer = TNLinear(64, 48, template="tt", rank=3).eval()
    other = TNLinear(64, 48, template="tt", rank=3)
    with torch.no_grad():
        w1 = layer.weight
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer.weight, other.weight)
        assert layer.weight is not w1


# ---------------------------------------------------------------------- budget
@pytest.mark.parametrize("name", ["tt", "ht", "tucker2", "cp", "kronecker", "tr"])
def test_budget_is_honoured(name):
    layer = encode(nn.Linear(256, 256), name, budget=0.1, init="random")
    target = 0.1 * 256 * 256
    n = layer.num_tn_params
    assert n <= target
    # uniform ranks can step past the budget (ht r^3, tr r^2); per-bond ranks fill the rest
    assert n >= 0.9 * target, (name, n, layer.template_options)
    opts = dict(layer.template_options)
    knob = opts.pop("rank")
    if isinstance(knob, list):  # topped up bond by bond: no single bond can grow within budget
        for k in range(len(knob)):
            grown = knob[:k] + [knob[k] + 1] + knob[k + 1:]
            try:
                p = get(name).formula(layer.tn_axes, rank=grown, **opts)
            except AdtnError:
                p = None
            assert p is None or p > target or p == n or n >= 0.9 * target
        return
    try:
        bigger = get(name).formula(layer.tn_axes, rank=knob + 1, **opts)
    except AdtnError:
        bigger = None
    assert bigger is None or bigger > target or bigger == n  # the largest size within the budget


def test_budget_reaches_large_fractions_with_clipped_ranks():
    layer = encode(nn.Linear(64, 64), "tt", budget=0.9, init="random")
    assert 0.5 * 4096 <= layer.num_tn_params <= 0.9 * 4096


def test_budget_sizes_depth_for_templates_sized_by_depth():
    if "adtn" not in names():
        pytest.skip("template 'adtn' not registered")
    layer = encode(nn.Linear(64, 48), "adtn", budget=0.1, init="random")
    assert layer.template_options["depth"] >= 1 and layer.num_tn_params <= 0.1 * 64 * 48 + 1


# ---------------------------------------------------------------------- padding
def test_prime_size_is_padded_and_cropped():
    lin = nn.Linear(97, 10)
    layer = encode(lin, "tt", rank=3, init="random", forward="direct")
    assert layer.pads == {"in": (97, 98)}
    assert "padded in 97->98" in repr(layer)
    assert layer.weight.shape == (10, 97)
    x = torch.randn(4, 97)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.forward_mode = "dense"
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_prime_channels_are_padded_in_conv_unfold():
    layer = encode(nn.Conv2d(13, 8, 3), "tt", rank=2, init="random", forward="direct")
    assert "in" in layer.pads
    x = torch.randn(2, 13, 6, 6)
    assert layer.choose_forward(tuple(x.shape)).form == "unfold"
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- nn.Module behaviour
def test_attributes_mirror_torch_layers():
    lin = TNLinear(64, 48, bias=False, template="tt", rank=2)
    assert (lin.in_features, lin.out_features, lin.bias) == (64, 48, None)
    assert lin.weight.shape == nn.Linear(64, 48).weight.shape
    conv = TNConv2d(16, 32, (3, 5), stride=2, padding=(1, 2), template="tucker2", rank=4)
    ref = nn.Conv2d(16, 32, (3, 5), stride=2, padding=(1, 2))
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(conv, attr) == getattr(ref, attr), attr
    assert conv.weight.shape == ref.weight.shape and isinstance(conv.bias, nn.Parameter)
    assert isinstance(conv.tn.graph, adtn.TensorGraph)
    assert "kernel_size=(3, 5)" in conv.extra_repr() and "template='tucker2'" in conv.extra_repr()


def test_same_padding():
    layer = TNConv2d(4, 6, 3, padding="same", template="cp", rank=3)
    x = torch.randn(1, 4, 7, 7)
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(y, F.conv2d(x, layer.weight, layer.bias, padding="same"), rtol=1e-5, atol=1e-5)
    assert y.shape[-2:] == (7, 7)


def test_reset_parameters_keeps_parameter_objects():
    layer = TNLinear(32, 16, template="tt", rank=2)
    before = {k: (p, p.detach().clone()) for k, p in layer.named_parameters()}
    layer.reset_parameters()
    for k, p in layer.named_parameters():
        assert p is before[k][0] and not torch.equal(p, before[k][1])
    std = float(layer.weight.detach().std())
    assert 0.2 / 32**0.5 < std < 2 / 32**0.5


def test_state_dict_round_trip():
    a = TNConv2d(8, 8, 3, padding=1, template="kronecker", rank=2)
    b = TNConv2d(8, 8, 3, padding=1, template="kronecker", rank=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == {"bias", "tn.params.a", "tn.params.b"}


def test_to_dtype_and_deepcopy():
    layer = TNLinear(64, 48, template="tt", rank=3)
    x = torch.randn(4, 64)
    ref = layer(x)
    clone = copy.deepcopy(layer)
    assert torch.equal(clone(x), ref)
    assert clone.tn.params["core0"] is not layer.tn.params["core0"]
    clone.to(torch.float64)
    assert clone.weight.dtype == torch.float64 and clone.bias.dtype == torch.float64
    torch.testing.assert_close(clone(x.double()), ref.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forward", ["dense", "direct"])
def test_torch_compile(forward):
    lin = TNLinear(64, 48, template="tt", rank=3, forward=forward)
    conv = TNConv2d(8, 8, 3, padding=1, template="tucker2", rank=3, forward=forward)
    x, xc = torch.randn(4, 64), torch.randn(2, 8, 6, 6)
    for layer, inp in ((lin, x), (conv, xc)):
        compiled = torch.compile(layer, backend="eager")
        torch.testing.assert_close(compiled(inp), layer(inp))
        compiled(inp).sum().backward()
        assert all(p.grad is not None for p in layer.parameters())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", ["tt", "tucker2", "cp", "kronecker"])
def test_layers_on_device(name, device):
    lin = encode(nn.Linear(64, 48), name, rank=2, init="random").to(device)
    conv = encode(nn.Conv2d(16, 32, 3, padding=1), name, rank=2, init="random").to(device)
    for layer, x in ((lin, torch.randn(3, 64, device=device)), (conv, torch.randn(2, 16, 8, 8, device=device))):
        for forward in ("dense", "direct", "auto"):
            layer.forward_mode = forward
            with torch.no_grad():
                y = layer(x)
                assert y.device.type == torch.device(device).type
                torch.testing.assert_close(y, reference(layer, x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- bad input
def test_unsupported_layer_is_named():
    with pytest.raises(AdtnError, match=r"encode: nn\.LSTM is not supported; supported: nn\.Linear, nn\.Conv1d, "
                                        r"nn\.Conv2d"):
        encode(nn.LSTM(4, 4), "tt", rank=2)


@pytest.mark.parametrize("template", ["tt", "tucker2", "cp", "kronecker"])
def test_grouped_convs_hold_the_grouped_kernel(template):
    torch.manual_seed(0)
    for conv, x in [(nn.Conv2d(16, 32, 3, padding=1, groups=4), torch.randn(2, 16, 9, 9)),
                    (nn.Conv2d(8, 8, 3, groups=8, bias=False), torch.randn(2, 8, 7, 7)),
                    (nn.Conv1d(8, 12, 3, groups=2, padding=1, padding_mode="circular"), torch.randn(2, 8, 11))]:
        for forward in ("dense", "direct", "auto"):
            layer = encode(conv, template, budget=0.5, forward=forward)
            assert layer.groups == conv.groups and layer.weight.shape == conv.weight.shape
            assert layer.num_tn_params <= 0.5 * conv.weight.numel()
            assert layer.choose_forward(tuple(x.shape)).mode == "dense"  # the grouped kernel is rebuilt
            same = torch.func.functional_call(conv, {"weight": layer.weight, "bias": layer.bias}, (x,))
            torch.testing.assert_close(layer(x), same, atol=1e-5, rtol=1e-4)
        assert f"groups={conv.groups}" in layer.extra_repr()


def test_grouped_conv_errors_and_compress():
    with pytest.raises(ShapeError, match=r"groups=3 must divide in_channels=8 and out_channels=8"):
        TNConv2d(8, 8, 3, groups=3, template="tt", rank=2)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, groups=2), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16))
    _out, report = adtn.compress(model, "tt", budget=0.5)
    assert [r.name for r in report.rows] == ["0", "2"]
    dense_flops = {r.name: r.flops_before for r in report.rows}
    assert dense_flops["0"] == 2 * 16 * 4 * 9 and dense_flops["2"] == 2 * 16 * 1 * 9  # per output position


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("template, rank", [("tt", 2), ("tucker2", (3, 2)), ("kronecker", 2), ("cp", 3)])
def test_padding_modes_match_torch(mode, template, rank):
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 6, 3, padding=1, padding_mode=mode), nn.Conv2d(4, 6, (3, 5), padding="same", padding_mode=mode),
             nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), padding_mode=mode),
             nn.Conv1d(4, 6, 3, padding=2, dilation=2, padding_mode=mode)]
    for conv in convs:
        x = torch.randn(2, 4, 9, 9) if isinstance(conv, nn.Conv2d) else torch.randn(2, 4, 11)
        for forward in ("dense", "direct", "auto"):
            layer = encode(conv, template, rank=rank, forward=forward)
            assert layer.padding_mode == mode and f"padding_mode='{mode}'" in layer.extra_repr()
            same = torch.func.functional_call(conv, {"weight": layer.weight, "bias": layer.bias}, (x,))
            torch.testing.assert_close(layer(x), same, atol=1e-5, rtol=1e-4)  # nn.Conv with the layer's kernel
    with pytest.raises(AdtnError, match=r"padding_mode must be one of \['zeros', 'reflect', 'replicate', 'circular'\]"):
        TNConv2d(4, 6, 3, padding_mode="mirror", template="tt", rank=2)


def test_calibration_uses_the_padding_mode():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
    x = torch.randn(4, 8, 6, 6)
    layer = encode(conv, "tt", budget=0.4, calibration=x)
    out_err = float((layer(x) - conv(x)).norm() / conv(x).norm())
    assert layer.shape_choice.output_error == pytest.approx(out_err, rel=1e-3)


def test_modes_must_multiply_to_the_features():
    with pytest.raises(ShapeError, match=r"out modes \(4, 4, 4\) multiply to 64, but the layer has 48 outputs"):
        encode(nn.Linear(64, 48), "tt", rank=2, modes=((4, 4, 4), (4, 4, 4)))
    with pytest.raises(ShapeError, match=r"in modes \(2, 2\) multiply to 4, but the layer has 16 input channels"):
        TNConv2d(16, 8, 3, template="tt", rank=2, modes=((4, 2), (2, 2)))


@pytest.mark.parametrize("sizes", [{"rank": 2, "budget": 0.1}, {"rank": 2, "tol": 0.1}, {"budget": 0.1, "tol": 0.1}])
def test_conflicting_sizes(sizes):
    with pytest.raises(RankError, match=r"give one of rank=, budget= or tol="):
        encode(nn.Linear(64, 48), "tt", **sizes)


def test_unknown_template_lists_valid_ones():
    with pytest.raises(TemplateError, match=r"template 'nope' not found; valid: \[.*'tt'"):
        encode(nn.Linear(64, 48), "nope", rank=2)


def test_template_of_the_wrong_kind(monkeypatch):
    monkeypatch.setitem(TEMPLATES, "linonly", Template("linonly", get("tt").build, kinds=("linear",)))
    with pytest.raises(TemplateError, match=r"template 'linonly' does not fit conv weights; templates for conv"):
        encode(nn.Conv2d(4, 4, 3), "linonly", rank=2)


def test_options_a_template_does_not_take():
    with pytest.raises(TemplateError, match=r"template 'tt' takes no depth=; its size is set by rank= or budget="):
        encode(nn.Linear(64, 48), "tt", depth=2)
    with pytest.raises(TemplateError, match=r"template 'tucker2' takes no modes=; templates with modes"):
        encode(nn.Linear(64, 48), "tucker2", rank=2, modes=((8, 6), (8, 8)))


def test_missing_size_budget_too_small_and_bad_forward():
    with pytest.raises(RankError, match=r"template 'tt' needs a size: pass rank=, budget="):
        TNLinear(64, 48, template="tt")
    with pytest.raises(RankError, match=r"budget 1e-05 .* is below the smallest 'tt'"):
        TNLinear(64, 48, template="tt", budget=1e-5)
    with pytest.raises(AdtnError, match=r"forward must be one of \['auto', 'dense', 'direct'\], got 'fast'"):
        TNLinear(64, 48, template="tt", rank=2, forward="fast")
    with pytest.raises(ShapeError, match=r"TNLinear: input of shape \(3, 5\) must end with in_features=64"):
        TNLinear(64, 48, template="tt", rank=2)(torch.randn(3, 5))


# ---------------------------------------------------------------------- chain executor (TT / MPO streaming)
CHAIN_CASES = [  # (in, out, modes, rank, batch): single cores (every step kind), merged cores, uneven modes
    (64, 64, ((4, 4, 4), (4, 4, 4)), 4, 1),
    (64, 64, ((4, 4, 4), (4, 4, 4)), 4, 8),
    (256, 256, ((4, 4, 4, 4), (4, 4, 4, 4)), 4, 8),
    (64, 48, None, 3, 5),
]


def chain_layer(i, o, modes, rank, dtype=torch.float64, **kw):
    extra = {"modes": modes} if modes else {}
    return TNLinear(i, o, template="tt", rank=rank, forward="direct", dtype=dtype, **extra, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CHAIN_CASES)
def test_tt_linear_streams_through_the_chain_executor(case, dtype):
    i, o, modes, rank, batch = case
    layer = chain_layer(i, o, modes, rank, dtype)
    assert layer._chain(batch) is not None
    x = torch.randn(batch, i, dtype=dtype, requires_grad=True)
    y, ref = layer(x), F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(y, ref, rtol=TOL[dtype], atol=TOL[dtype] * float(ref.detach().abs().max()))
    g = torch.randn_like(y)
    params = [x, *layer.parameters()]
    got, want = torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10 * float(b.abs().max()))


def test_chain_executor_merges_neighbouring_cores_when_cheaper():
    layer = TNLinear(4096, 4096, template="tt", rank=16, modes=((8,) * 4, (8,) * 4))
    chain = layer._chain(128)
    assert [s.cores for s in chain.steps] == [(2, 3), (0, 1)]  # two products of K = 64 and 1024, no transposes
    assert layer.choose_forward((128, 4096)).mode == "direct"
    assert TNLinear(64, 64, template="tt", rank=4, modes=((4,) * 3, (4,) * 3))._chain(1).steps[0].cores == (2,)


@pytest.mark.parametrize("case", [c for c in CHAIN_CASES if c[0] <= 64])
def test_gradcheck_chain_executor(case):
    i, o, modes, rank, batch = case
    layer = chain_layer(i, o, modes, rank)
    x = torch.randn(batch, i, dtype=torch.float64, requires_grad=True)
    keys, values = zip(*[(k, p.detach().clone().requires_grad_(True)) for k, p in layer.named_parameters()])
    assert layer._chain(batch) is not None

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(keys, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *values), eps=1e-6, atol=1e-6)


def test_chain_executor_permutes_legs_out_of_chain_order():
    g = adtn.TensorGraph("perm")
    g.add_node("c0", {"o": 4, "i": 3, "r": 2})
    g.add_node("c1", {"l": 2, "o": 5, "i": 6})
    g.bond("c0.r", "c1.l")
    g.set_outputs({"out": ["c0.o", "c1.o"], "in": ["c1.i", "c0.i"]}).freeze()
    layer = TNLinear(18, 20, structure=g, forward="direct", dtype=torch.float64)
    chain = layer._chain(7)
    assert chain is not None and (chain.in_perm is not None or chain.out_perm is not None)
    x = torch.randn(7, 18, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-10, atol=1e-10)
    keys, values = zip(*[(k, p.detach().clone().requires_grad_(True)) for k, p in layer.named_parameters()])
    assert torch.autograd.gradcheck(lambda x, *p: torch.func.functional_call(layer, dict(zip(keys, p)), (x,)),
                                    (x, *values))


def test_chain_executor_takes_leading_dims_and_padding():
    layer = chain_layer(64, 48, None, 3)
    x = torch.randn(2, 3, 64, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-10, atol=1e-10)
    padded = encode(nn.Linear(97, 10, dtype=torch.float64), "tt", rank=3, init="random", forward="direct")
    assert padded.pads and padded._chain(4) is not None
    x = torch.randn(4, 97, dtype=torch.float64)
    torch.testing.assert_close(padded(x), F.linear(x, padded.weight, padded.bias), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["tr", "ht", "semi_tr"])
def test_non_chains_use_the_planner(name):
    layer = encode(nn.Linear(256, 256), name, rank=2, init="random", forward="direct")  # a ring, a tree
    assert layer._chain(5) is None
    x = torch.randn(5, 256)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tt", "tucker2", "cp", "kronecker", "semi_tt"])
def test_path_shaped_networks_stream_through_the_chain_executor(name):
    layer = encode(nn.Linear(256, 256, dtype=torch.float64), name, rank=2, init="random", forward="direct")
    assert layer._chain(5) is not None  # cp: its delta joins just two factors, a plain bond
    x = torch.randn(5, 256, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-10, atol=1e-10)


def test_a_two_core_ring_is_a_chain_with_a_double_bond():
    layer = encode(nn.Linear(64, 48, dtype=torch.float64), "tr", rank=2, init="random", forward="direct",
                   modes=((8, 6), (8, 8)))
    assert layer._chain(5) is not None
    x = torch.randn(5, 64, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-10, atol=1e-10)


def test_pooled_buffers_survive_two_forwards_before_backward(monkeypatch):
    from adtn.plan import WORKSPACE

    monkeypatch.setattr(WORKSPACE, "min_bytes", 0)  # pool every intermediate
    layer = chain_layer(256, 256, ((4,) * 4, (4,) * 4), 4)
    assert len(layer._chain(8).steps) > 1
    x1, x2 = (torch.randn(8, 256, dtype=torch.float64, requires_grad=True) for _ in range(2))
    y1, y2 = layer(x1), layer(x2)  # the second forward must not reuse the first one's saved states
    (y1 ** 2).sum().add((3 * y2).sum()).backward()
    got = [x1.grad, x2.grad, *(p.grad for p in layer.parameters())]
    for t in [x1, x2, *layer.parameters()]:
        t.grad = None
    w = layer.weight
    (F.linear(x1, w, layer.bias) ** 2).sum().add((3 * F.linear(x2, w, layer.bias)).sum()).backward()
    want = [x1.grad, x2.grad, *(p.grad for p in layer.parameters())]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_workspace_reuses_a_buffer_only_once_released():
    from adtn.plan import Workspace

    ws = Workspace(min_bytes=0)
    like = torch.empty(0, dtype=torch.float64)
    ptr = lambda t: t.untyped_storage().data_ptr()
    a = ws.empty((4, 5), like)
    pa = ptr(a)
    b = ws.empty((20,), like)
    pb = ptr(b)
    assert pb != pa  # a is held
    del b
    c = ws.empty((2, 10), like)
    assert ptr(c) == pb  # b was released
    view = a[1:]
    del a
    d = ws.empty((10, 2), like)
    assert ptr(d) not in (pa, pb)  # a view keeps a's storage busy, c holds b's
    del view
    e = ws.empty((5, 4), like)
    assert ptr(e) == pa and e._base is None and e.is_contiguous() and e.shape == (5, 4) and e.dtype == torch.float64
    assert ws.nbytes == 3 * 160
    ws.clear()
    assert ws.nbytes == 0
    small = Workspace(min_bytes=1 << 20)
    assert small.out((4,), like) is None and small.empty((4,), like).shape == (4,) and small.nbytes == 0


def test_torch_func_grad_runs_the_plain_ops():
    for layer, x in ((chain_layer(64, 48, None, 3), torch.randn(5, 64, dtype=torch.float64)),
                     (encode(nn.Conv2d(8, 8, 3, dtype=torch.float64), "cp", rank=3, init="random"),
                      torch.randn(2, 8, 6, 6, dtype=torch.float64))):
        params = {k: p.detach() for k, p in layer.named_parameters()}

        def loss(p, layer=layer, x=x):
            return torch.func.functional_call(layer, p, (x,)).pow(2).sum()

        grads = torch.func.grad(loss)(params)
        layer.zero_grad()
        layer(x).pow(2).sum().backward()
        for k, p in layer.named_parameters():
            torch.testing.assert_close(grads[k], p.grad)


# ---------------------------------------------------------------------- conv fast forms across layouts
@pytest.mark.parametrize("name,options", [("tucker2", {"rank": 3}), ("cp", {"rank": 3}),
                                          ("kronecker", {"rank": 2, "factors": ((8, 1, 3, 3), (1, 8, 1, 1))}),
                                          ("kronecker", {"rank": 2, "factors": ((1, 8, 1, 1), (8, 1, 3, 3))}),
                                          ("kronecker", {"rank": 2, "factors": ((8, 1, 3, 1), (1, 8, 1, 3))})])
def test_fast_conv_forms_keep_the_input_layout(name, options):
    layer = encode(nn.Conv2d(8, 8, 3, padding=1, dtype=torch.float64), name, init="random", forward="direct",
                   **options)
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    assert layer.choose_forward(tuple(x.shape)).form == FAST[name]
    ref = reference(layer, x)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        inp = inp.detach().requires_grad_(True)
        y = layer(inp)
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
        channels_last = inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous()
        assert y.is_contiguous(memory_format=torch.channels_last) if channels_last else y.is_contiguous()
        y.sum().backward()  # an expanded gradient
        g = inp.grad
        inp.grad = None
        reference(layer, inp).sum().backward()
        torch.testing.assert_close(g, inp.grad, rtol=1e-10, atol=1e-10)
    keys, values = zip(*[(k, p.detach().clone().requires_grad_(True)) for k, p in layer.named_parameters()])
    xs = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: torch.func.functional_call(layer, dict(zip(keys, p)), (x,)),
                                    (xs, *values))


# ---------------------------------------------------------------------- torch.autocast
@pytest.mark.parametrize("template", ["tt", "ht", "tucker2", "cp", "kronecker", "semi_tt", "adtn"])
@pytest.mark.parametrize("forward", ["dense", "direct", "auto"])
def test_layers_run_under_autocast(template, forward):
    torch.manual_seed(0)
    opts = {"init": "random", "depth": 2} if template == "adtn" else {"budget": 0.3}
    for layer, x in [(nn.Linear(512, 256), torch.randn(64, 512)), (nn.Conv2d(32, 64, 3, padding=1), torch.randn(4, 32, 12, 12))]:
        tn = encode(layer, template, forward=forward, **opts)
        ref = tn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = tn(x)
            assert y.dtype == layer(x).dtype == torch.bfloat16  # as the dense layer's
        torch.testing.assert_close(y.float(), ref, atol=0.02 * float(ref.abs().max()), rtol=0.02)
        y.float().square().mean().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in tn.tn.parameters())


def test_a_compiled_network_contracts_under_autocast():
    m = adtn.compile(adtn.templates.get("ht").build({"out": 64, "in": 48, "kh": 3, "kw": 3}, rank=3), seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = m.dense()  # matmul steps come back in bf16, tensordot steps get matching operands
    torch.testing.assert_close(dense.float(), m.dense(), atol=0.02 * float(m.dense().abs().max()), rtol=0.02)


def test_a_layer_on_a_user_graph_names_the_graph_not_a_template():
    g = adtn.TensorGraph("mine")
    g.add_node("a", legs={"o": 4, "r": 3}).add_node("b", legs={"r": 3, "i": 5})
    g = g.bond("a.r", "b.r").set_outputs({"out": ["a.o"], "in": ["b.i"]}).freeze()
    layer = TNLinear(5, 4, structure=g)
    assert layer.template is None and "graph='mine'" in layer.extra_repr() and "template=" not in layer.extra_repr()
    target = torch.randn(4, 3) @ torch.randn(3, 5)  # rank 3: the graph can hold it
    adtn.api.initialize(layer, target, "auto", {"steps": 3000, "lr": 0.05})  # no template initialiser: fitted
    assert float((layer.weight - target).norm() / target.norm()) < 0.05
    with pytest.raises(AdtnError, match=r"init='decompose' needs an SVD-family initialiser, and template None \(a user graph\)"):
        adtn.api.initialize(layer, target, "decompose")
    from adtn.report import Report
    assert Report.from_model(nn.Sequential(layer)).rows[0].template == "graph 'mine'"


# ---------------------------------------------------------------------- low-rank conv form
LOW_RANK = [("tt", lambda o, i: {"rank": 3, "modes": ((o, 1), (1, i)), "kernel_with": 1}),
            ("tr", lambda o, i: {"rank": [3, 1], "modes": ((o, 1), (1, i)), "kernel_with": 1}),
            ("ht", lambda o, i: {"rank": 3, "modes": ((o, 1), (1, i)), "kernel_with": 1}),
            ("semi_tt", lambda o, i: {"rank": 6, "t": 2, "modes": ((o, 1), (2, i // 2)), "kernel_with": 1})]


@pytest.mark.parametrize("template, options", LOW_RANK, ids=[t for t, _ in LOW_RANK])
def test_svd_like_conv_runs_as_two_convs(template, options):
    torch.manual_seed(0)
    for conv, x in [(nn.Conv2d(16, 32, 3, padding=1), torch.randn(2, 16, 9, 9)),
                    (nn.Conv2d(16, 32, (3, 5), stride=2, padding=(1, 2), padding_mode="circular"), torch.randn(2, 16, 9, 9)),
                    (nn.Conv1d(8, 12, 5, padding=2, bias=False), torch.randn(2, 8, 13))]:
        layer = encode(conv, template, forward="direct", **options(conv.out_channels, conv.in_channels))
        assert layer.choose_forward(tuple(x.shape)).form == "low_rank"
        same = torch.func.functional_call(conv, {"weight": layer.weight, "bias": layer.bias}, (x,))
        torch.testing.assert_close(layer(x), same, atol=1e-5, rtol=1e-4)


def test_low_rank_form_gradcheck_and_where_it_does_not_apply():
    conv = nn.Conv2d(4, 6, 3, padding=1).double()
    layer = encode(conv, "ht", forward="direct", rank=2, modes=((6, 1), (1, 4)), kernel_with=1)
    keys = list(layer.tn.params)
    params = [layer.tn.params[k].detach().clone().requires_grad_() for k in keys]
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

    def run(x, *ps):
        return torch.func.functional_call(layer, {f"tn.params.{k}": p for k, p in zip(keys, ps)}, (x,))

    assert layer.choose_forward(tuple(x.shape)).form == "low_rank"
    assert torch.autograd.gradcheck(run, (x, *params))
    split_out = encode(nn.Conv2d(16, 32, 3), "ht", rank=3, modes=((8, 4), (1, 16)), kernel_with=1, forward="direct")
    assert split_out.choose_forward((2, 16, 9, 9)).form == "unfold"  # out legs on two cores: no U | V cut


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("template", ["tt", "tucker2", "kronecker", "cp"])
def test_half_precision_layers(dtype, template):
    torch.manual_seed(0)
    for layer, x in [(nn.Linear(64, 48), torch.randn(5, 64)), (nn.Conv2d(8, 16, 3, padding=1), torch.randn(2, 8, 7, 7))]:
        half = encode(copy.deepcopy(layer).to(dtype), template, budget=0.5)
        y = half(x.to(dtype))
        assert y.dtype == dtype and half.weight.dtype == dtype
        # the dense layer with the half network's own kernel, in float32
        ref = torch.func.functional_call(layer, {"weight": half.weight.float(), "bias": half.bias.float()}, (x,))
        torch.testing.assert_close(y.float(), ref, atol=0.05 * float(ref.abs().max()), rtol=0.05)
        y.float().sum().backward()


@pytest.mark.parametrize("forward", ["dense", "direct"])
@pytest.mark.parametrize("name", ["tucker2", "cp", "kronecker", "tt"])
def test_conv_takes_unbatched_input_like_torch(name, forward):
    """(C, H, W) / (C, L) run as a batch of one, as nn.Conv2d / nn.Conv1d take them."""
    for cls, ref_cls, shape in ((TNConv2d, nn.Conv2d, (8, 7, 6)), (TNConv1d, nn.Conv1d, (8, 9))):
        layer = cls(8, 6, 3, stride=2, padding=1, padding_mode="reflect", template=name, rank=2, forward=forward)
        ref = ref_cls(8, 6, 3, stride=2, padding=1, padding_mode="reflect")
        with torch.no_grad():
            ref.weight.copy_(layer.weight)
            ref.bias.copy_(layer.bias)
        x = torch.randn(shape, requires_grad=True)
        y = layer(x)
        assert y.shape == ref(x).shape == layer(x[None]).shape[1:]
        torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-5)
        y.sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape


def test_conv_rejects_input_of_the_wrong_rank_or_channels():
    conv = TNConv2d(8, 6, 3, template="tucker2", rank=2)
    with pytest.raises(ShapeError, match=r"input must be \(N, 8, H, W\) or unbatched \(8, H, W\), got \(8, 6\)"):
        conv(torch.randn(8, 6))
    with pytest.raises(ShapeError, match=r"unbatched \(8, L\), got \(2, 3, 9\)"):
        TNConv1d(8, 6, 3, template="tucker2", rank=2)(torch.randn(2, 3, 9))


@pytest.mark.parametrize("template", adtn.templates.names())
def test_state_dict_loads_with_weights_only(template):
    """A TN layer's state_dict holds tensors and plain metadata only, so ``torch.load`` with its
    default ``weights_only=True`` reads it (a method once shadowed ``nn.Module._version``, which
    the metadata records, and pickled the whole layer into the file)."""
    import io
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = [adtn.encode(nn.Linear(32, 24), template, budget=0.5),
                  adtn.encode(nn.Conv2d(8, 12, 3), template, budget=0.5)]
    for layer in layers:
        state = layer.state_dict()
        assert all(isinstance(v, int) for meta in state._metadata.values() for v in meta.values())
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        loaded = torch.load(buf)
        twin = copy.deepcopy(layer)
        for p in twin.parameters():
            p.data.zero_()
        twin.load_state_dict(loaded)
        x = torch.randn((2, 32) if isinstance(layer, adtn.TNLinear) else (2, 8, 7, 7))
        torch.testing.assert_close(twin(x), layer(x))

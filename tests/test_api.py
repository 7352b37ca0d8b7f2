import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adtn
import adtn.fitting
from adtn.api import OversizeWarning, encode, load, save
from adtn.errors import AdtnError, RankError, SchemaError
from adtn.layers import TNConv1d, TNConv2d, TNLinear
from adtn.templates import TEMPLATES, get
from adtn.templates.tucker import tucker2


def svd_init(dense, axes, *, rank=None, tol=None, **options):
    """A Tucker-2 initialiser for linear weights (the registry's init signature): truncated SVD."""
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    if rank is None:
        tail = (s.flip(0) ** 2).cumsum(0).flip(0).sqrt() / s.norm()  # tail[k]: error of keeping k values
        rank = next((k for k in range(1, len(s)) if tail[k] <= tol), len(s))
    graph = tucker2(axes, rank=rank, **options)
    return graph, {"u_out": u[:, :rank], "core": torch.diag(s[:rank]), "u_in": vh[:rank].t()}


@pytest.fixture
def with_svd_init(monkeypatch):
    monkeypatch.setitem(TEMPLATES, "tucker2", dataclasses.replace(get("tucker2"), init=svd_init))


@pytest.fixture
def tt_without_init(monkeypatch):
    monkeypatch.setitem(TEMPLATES, "tt", dataclasses.replace(get("tt"), init=None))


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []

    def fake_fit(module, dense, **options):
        calls.append((module, dense.shape, options))
        return adtn.fitting.FitResult(0.0, 0, converged=True, stop="target")

    monkeypatch.setattr(adtn.fitting, "fit", fake_fit)
    return calls


def test_encode_returns_drop_in_layers_and_copies_the_bias():
    lin, conv, conv1 = nn.Linear(64, 48), nn.Conv2d(16, 32, 3), nn.Conv1d(8, 12, 3)
    a = encode(lin, "tt", rank=3, init="random")
    b = encode(conv, "tucker2", rank=4, init="random")
    c = encode(conv1, "cp", rank=3, init="random")
    assert isinstance(a, TNLinear) and isinstance(b, TNConv2d) and isinstance(c, TNConv1d)
    assert torch.equal(a.bias, lin.bias) and torch.equal(b.bias, conv.bias) and a.bias is not lin.bias
    no_bias = encode(nn.Linear(8, 8, bias=False), "tt", rank=2, init="random")
    assert no_bias.bias is None


def test_encode_follows_the_layer_dtype():
    layer = encode(nn.Linear(32, 16, dtype=torch.float64), "tt", rank=2, init="random")
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64


def test_decompose_uses_the_template_initialiser(with_svd_init):
    lin = nn.Linear(32, 24)
    layer = encode(lin, "tucker2", rank=24, init="decompose")
    torch.testing.assert_close(layer.weight, lin.weight, rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 32)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-4, atol=1e-5)


def test_auto_prefers_the_initialiser_over_fit(with_svd_init, fit_calls):
    encode(nn.Linear(32, 24), "tucker2", rank=4)
    assert fit_calls == []


def test_tol_picks_the_smallest_rank_reaching_it(with_svd_init):
    torch.manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(40, 40))
    v, _ = torch.linalg.qr(torch.randn(30, 30))
    s = torch.tensor([10.0, 5.0, 2.0, 0.5] + [0.01] * 26)
    lin = nn.Linear(30, 40)
    with torch.no_grad():
        lin.weight.copy_(u[:, :30] @ torch.diag(s) @ v.t())
    layer = encode(lin, "tucker2", tol=0.01)
    assert layer.template_options["rank"] == 4
    err = torch.linalg.norm(layer.weight - lin.weight) / torch.linalg.norm(lin.weight)
    assert err <= 0.01
    assert adtn.TensorGraph.from_json(layer.structure.to_json()) == layer.structure


def test_tol_needs_an_initialiser(tt_without_init):
    with pytest.raises(RankError, match=r"tol needs init='decompose', and template 'tt' has no SVD-family"):
        encode(nn.Linear(32, 24), "tt", tol=0.1)


def test_tol_needs_decompose_init(with_svd_init):
    with pytest.raises(RankError, match=r"tol needs init='decompose' .*got init='random'"):
        encode(nn.Linear(32, 24), "tucker2", tol=0.1, init="random")


def test_decompose_without_initialiser_is_an_error(tt_without_init):
    with pytest.raises(AdtnError, match=r"init='decompose' needs an SVD-family initialiser, and template 'tt' has"):
        encode(nn.Linear(32, 24), "tt", rank=2, init="decompose")


def test_fit_is_the_fallback_and_takes_options(tt_without_init, fit_calls):
    encode(nn.Linear(32, 24), "tt", rank=2, fit_options={"steps": 3})
    encode(nn.Linear(97, 5), "tt", rank=2, init="fit")
    assert [c[1] for c in fit_calls] == [(24, 32), (5, 98)]  # the padded weight is fitted
    assert fit_calls[0][2] == {"progress": None, "steps": 3}  # a progress bar on a terminal only
    encode(nn.Linear(32, 24), "tt", rank=2, init="random")
    assert len(fit_calls) == 2


def test_deep_adtn_starts_random_and_fits_only_on_request(fit_calls):
    lin = nn.Linear(64, 32)
    layer = encode(lin, "adtn", depth=4)  # the default init: no fit
    assert fit_calls == [] and rel(layer.weight, lin.weight) > 0.5
    encode(lin, "adtn", depth=2, init="fit", fit_options={"progress": False})
    assert len(fit_calls) == 1 and fit_calls[0][2] == {"progress": False}


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("make", [lambda: nn.Linear(64, 32), lambda: nn.Linear(300, 120, bias=False),
                                  lambda: nn.Conv2d(16, 8, 3)], ids=["linear", "linear-300", "conv"])
def test_random_init_matches_the_dense_output_variance(make, depth):
    torch.manual_seed(depth)
    dense = make()
    with torch.no_grad():
        dense.weight.mul_(5.0)  # far from the fan-in default, so the scale must come from the weight
    layer = encode(dense, "adtn", depth=depth)
    x = torch.randn(64, 64) if isinstance(dense, nn.Linear) and dense.in_features == 64 else \
        torch.randn(64, 300) if isinstance(dense, nn.Linear) else torch.randn(8, 16, 6, 6)
    with torch.no_grad():
        ratio = float(layer(x).var() / dense(x).var())
    assert 0.5 < ratio < 2.0
    tt = encode(dense, "tt", rank=2, init="random")  # every template's random init is scaled the same way
    torch.testing.assert_close(tt.weight.norm(), dense.weight.norm())


def test_fit_shows_a_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    module = adtn.compile(get("tt").build({"out": 8, "in": 8}, rank=2))
    target = torch.randn(8, 8)
    adtn.fit(module, target, steps=3, progress=None)  # pytest's stderr is no terminal: no bar
    adtn.fit(module, target, steps=3)
    assert capsys.readouterr().err == ""
    adtn.fit(module, target, steps=3, progress=True)
    assert "fit" in capsys.readouterr().err


def test_a_poor_fitted_init_is_reported():
    # ADTN at 10% of a random weight cannot reproduce it: the fit levels off near error 1
    lin = nn.Linear(64, 32)
    with pytest.warns(UserWarning, match=r"fitting 'adtn' to the weight stopped at relative error 0\.9\d+ \(plateau"):
        encode(lin, "adtn", budget=0.1, init="fit")


@pytest.mark.parametrize("budget", [1.5, 0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_budget_outside_zero_one_is_an_error(budget):
    with pytest.raises(RankError, match=r"encode: budget is a fraction of the dense parameters, in \(0, 1\], got"):
        encode(nn.Linear(32, 24), "tt", budget=budget)
    with pytest.raises(RankError, match=r"budget is a fraction of the dense parameters, in \(0, 1\]"):
        TNLinear(32, 24, template="tt", budget=budget)


def test_a_clipped_rank_states_the_ranks_the_network_has():
    lin = nn.Linear(64, 32)
    with pytest.warns(OversizeWarning, match=r"Linear weight \(32, 64\) as template 'tt' \(modes=\(\(8, 4\), \(8, 8\)\), "
                                             r"rank=\[32\]\) has 3,072 parameters, 1.50x the dense weight's 2,048"):
        layer = encode(lin, "tt", rank=1000)
    assert layer.template_options["rank"] == [32] and "rank=[32]" in repr(layer) and "1000" not in repr(layer)
    with pytest.warns(OversizeWarning, match="2,368 parameters"):
        three = encode(lin, "tt", rank=20, modes=((4, 4, 2), (4, 4, 4)))  # the bonds can take 16 and 8
    assert three.template_options["rank"] == [16, 8]
    assert encode(lin, "tt", rank=4).template_options["rank"] == 4  # a rank every bond takes stays as given
    with pytest.warns(OversizeWarning, match=r"template 'tucker2' \(rank=\[32, 64\]\) has 7,168 parameters, 3.50x"):
        encode(lin, "tucker2", rank=100)


@pytest.mark.parametrize("kw", [{"depth": 8}, {"modes": ((4, 4), (4, 4)), "rank": 16}, {"tol": 0.01}],
                         ids=["depth", "modes", "tol"])
def test_every_sizing_path_warns_when_the_network_outgrows_the_weight(kw):
    lin = nn.Linear(16, 16)
    template = "adtn" if "depth" in kw else "tt"
    with pytest.warns(OversizeWarning, match=rf"Linear weight \(16, 16\) as template '{template}' .* has [\d,]+ "
                                             r"parameters, \d\.\d\dx the dense weight's 256: larger than the layer"):
        encode(lin, template, **kw)


def test_tol_searches_the_shape():
    torch.manual_seed(0)
    lin = nn.Linear(128, 96)
    with torch.no_grad():  # rank 6 plus noise: TT's balanced modes cannot see the low rank, the search can
        lin.weight.copy_(torch.randn(96, 6) @ torch.randn(6, 128) + 0.05 * torch.randn(96, 128))
    with pytest.warns(OversizeWarning, match=r"has 15,360 parameters, 1.25x the dense weight's 12,288"):
        default = encode(lin, "tt", tol=0.1, shape="default")
    searched = encode(lin, "tt", tol=0.1)
    assert rel(searched.weight, lin.weight) <= 0.1 and rel(default.weight, lin.weight) <= 0.1
    assert searched.num_tn_params == 1344 and searched.template_options["rank"] == [6]
    assert searched.shape_choice is not None and searched.shape_choice.params == searched.num_tn_params
    assert f"rank={searched.template_options['rank']}" in searched.shape_choice.summary()


def test_lazy_and_meta_layers():
    with pytest.raises(AdtnError, match="LazyLinear is a lazy layer whose weight is not initialised yet"):
        encode(nn.LazyLinear(10), "tt", rank=2)
    with pytest.raises(AdtnError, match=r"layer '0' \(LazyLinear\): a lazy layer"):
        adtn.compress(nn.Sequential(nn.LazyLinear(10)), "tt", budget=0.3)
    shaped = encode(nn.Conv2d(16, 8, 3, device="meta"), "tt", budget=0.5)  # sized, not initialised
    assert shaped.weight.is_meta and shaped.num_tn_params <= 0.5 * 16 * 8 * 9
    assert shaped.num_tn_params == encode(nn.Conv2d(16, 8, 3), "tt", budget=0.5, shape="default").num_tn_params
    with pytest.raises(AdtnError, match="tol= needs the weight's values, and a meta-device layer has none"):
        encode(nn.Linear(16, 8, device="meta"), "tt", tol=0.5)


def test_fit_really_fits():
    lin = nn.Linear(16, 8)
    layer = encode(lin, "tucker2", rank=8, init="fit", fit_options={"steps": 300, "lr": 0.05})
    err = torch.linalg.norm(layer.weight - lin.weight) / torch.linalg.norm(lin.weight)
    assert err < 0.1


def rel(a, b):
    return float(torch.linalg.norm(a.detach() - b.detach()) / torch.linalg.norm(b.detach()))


@pytest.mark.parametrize("which", ["linear", "conv"])
@pytest.mark.parametrize("name", [n for n in adtn.templates.names() if get(n).init is not None])
def test_registered_initialisers_reconstruct(name, which):
    torch.manual_seed(0)
    layer = nn.Linear(64, 48) if which == "linear" else nn.Conv2d(16, 32, 3, padding=1)
    if which not in ("linear",) and "conv" not in get(name).kinds:
        pytest.skip(f"{name} does not fit conv weights")
    options = {"compress": ("out", "in")} if name == "semi_tucker" and which == "conv" else {}
    low = encode(layer, name, budget=0.1, init="decompose", **options)
    assert rel(low.weight, layer.weight) < 1.0
    x = torch.randn(2, 64) if which == "linear" else torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        ref = F.linear(x, low.weight, low.bias) if which == "linear" else F.conv2d(x, low.weight, low.bias, padding=1)
        torch.testing.assert_close(low(x), ref, rtol=1e-4, atol=1e-5)


def test_tol_with_a_registered_initialiser():
    lin = nn.Linear(64, 48)
    layer = encode(lin, "tt", tol=0.5)
    assert rel(layer.weight, lin.weight) <= 0.5
    assert layer.template_options["rank"] is not None


def test_a_prime_size_is_padded_for_the_initialiser():
    lin = nn.Linear(97, 10)
    layer = encode(lin, "tt", rank=100, clip=True, init="decompose")
    assert layer.pads == {"in": (97, 98)}
    assert rel(layer.weight, lin.weight) < 1e-4


def test_unknown_init():
    with pytest.raises(AdtnError, match=r"init must be one of \['auto', 'decompose', 'fit', 'random'\]"):
        encode(nn.Linear(8, 8), "tt", rank=2, init="svd")


def test_encode_refuses_an_encoded_layer():
    layer = encode(nn.Linear(8, 8), "tt", rank=2, init="random")
    with pytest.raises(AdtnError, match="already a TN layer"):
        encode(layer, "tt", rank=2)


def compressed_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        encode(nn.Conv2d(3, 8, 3, padding=1), "tucker2", rank=2, init="random"),
        nn.ReLU(),
        encode(nn.Conv2d(8, 8, 3, padding=1), "kronecker", rank=2, init="random"),
        nn.Flatten(),
        encode(nn.Linear(8 * 6 * 6, 13), "tt", rank=3, init="random", forward="direct"),
    )


def test_save_load_bit_exact(tmp_path):
    model = compressed_model()
    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    model.eval()
    with torch.no_grad():
        ref_eval = model(x)  # builds eval caches, which are not saved
    path = tmp_path / "model.pt"
    save(model, path)
    loaded = load(path)
    assert loaded[4]._weight_cache is None and loaded[4].pads == {"out": (13, 15)}
    with torch.no_grad():
        assert torch.equal(loaded(x), ref_eval)
    loaded.train()
    assert torch.equal(loaded(x), ref)
    assert loaded[4].template == "tt" and loaded[4].template_options == model[4].template_options


def test_save_keeps_each_structure_as_json():
    model = compressed_model()
    buf = io.BytesIO()
    save(model, buf)
    buf.seek(0)
    payload = torch.load(buf, weights_only=True)  # plain data: nothing to unpickle but tensors
    assert payload["format"] == "adtn.model/2"
    assert set(payload["layers"]) == {"0", "2", "4"}
    graph = adtn.TensorGraph.from_json(payload["layers"]["4"]["structure"])
    assert graph == model[4].tn.graph


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(SchemaError, match=r"plain.pt': expected a file written by adtn.save "
                                          r"\(format 'adtn.model/2'\), got None"):
        load(path)
    with pytest.raises(AdtnError, match="model must be an nn.Module"):
        save({"a": 1}, tmp_path / "x.pt")

"""Shape search (adtn.shapes): known shapes are found, auto is never worse than the default
rule or a truncated SVD at the same budget, padding and calibration inputs are used, and
encode / compress use the choice."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adtn
from adtn.compress import compress
from adtn.errors import AdtnError, TemplateError
from adtn.layers import TNLinear
from adtn.shapes import SEARCHABLE, search
from adtn.shapes.spectra import Unfoldings, kron_key


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a.detach() - b.detach()) / torch.linalg.vector_norm(b.detach()))


# ---------------------------------------------------------------------- known shapes
def test_kronecker_sum_with_known_split_is_found():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 8, generator=g), torch.randn(2, 16, 4, generator=g)
    w = torch.kron(a[0], b[0]) + torch.kron(a[1], b[1])  # (64, 32), split out 4*16, in 8*4
    choice = search("kronecker", w, {"out": 64, "in": 32}, budget=0.1)
    assert choice.error < 1e-5 and choice.measured
    assert tuple(choice.options["factors"][0].values()) in ((4, 8), (16, 4))
    assert choice.rank == 2


def test_tt_matrix_with_known_modes_is_found():
    g = torch.Generator().manual_seed(1)
    c0, c1 = torch.randn(4, 8, 3, generator=g), torch.randn(3, 16, 4, generator=g)  # (o, i, r), (r, o, i)
    w = torch.einsum("air,rbj->abij", c0, c1).reshape(64, 32)  # out = (4, 16), in = (8, 4)
    choice = search("tt", w, {"out": 64, "in": 32}, budget=0.15)
    assert choice.error < 1e-5
    assert choice.options["modes"] == ((4, 16), (8, 4))


@pytest.mark.parametrize(("template", "modes"), [("ht", ((4, 4, 4), (2, 4, 4))), ("tr", ((4, 16), (8, 4)))])
def test_ht_and_tr_with_known_modes_are_found(template, modes):
    torch.manual_seed(2)
    exact = TNLinear(32, 64, template=template, rank=2, modes=modes)  # a random network of that shape
    w = exact.weight.detach()
    choice = search(template, w, {"out": 64, "in": 32}, budget=exact.num_tn_params / w.numel())
    assert choice.error < 1e-5
    assert choice.params <= exact.num_tn_params


def test_the_bounds_match_the_singular_values():
    w = torch.randn(24, 36, generator=torch.Generator().manual_seed(3))
    u = Unfoldings(w)
    key = kron_key((4, 6), (6, 6))
    m = w.reshape(4, 6, 6, 6).permute(0, 2, 1, 3).reshape(24, 36)
    s2 = torch.linalg.svdvals(m.double()) ** 2
    assert u.tail2(key, 5, "exact") == pytest.approx(float(s2[5:].sum()), rel=1e-9)
    assert u.tail2(key, 24, "screen") == 0.0


# ---------------------------------------------------------------------- never worse
def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    rnd = torch.randn(64, 32, 3, 3, generator=g)
    low = (torch.randn(64, 6, generator=g) @ torch.randn(6, 32 * 9, generator=g)).reshape(64, 32, 3, 3)
    return {"random": rnd, "lowrank+noise": low + 0.05 * torch.randn(64, 32, 3, 3, generator=g),
            "linear": torch.randn(96, 64, generator=g) @ torch.diag(torch.logspace(0, -2, 64))}


def _layer(w: torch.Tensor) -> nn.Module:
    layer = nn.Linear(w.shape[1], w.shape[0]) if w.dim() == 2 else nn.Conv2d(w.shape[1], w.shape[0], 3)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


@pytest.mark.parametrize("template", SEARCHABLE)
@pytest.mark.parametrize("name", ["random", "lowrank+noise", "linear"])
def test_auto_never_worse_than_default(template, name):
    w = _weights()[name]
    layer = _layer(w)
    auto = adtn.encode(layer, template, budget=0.25)  # shape="auto" is the default under budget=
    fixed = adtn.encode(layer, template, budget=0.25, shape="default")
    assert auto.shape_choice is not None and fixed.shape_choice is None
    assert auto.num_tn_params <= 0.25 * w.numel()
    assert _rel(auto.weight, w) <= _rel(fixed.weight, w) + 1e-6
    assert abs(_rel(auto.weight, w) - auto.shape_choice.error) < 1e-4
    assert "shape=auto" in repr(auto)


@pytest.mark.parametrize("template", SEARCHABLE)
@pytest.mark.parametrize("shape", [(96, 64), (32, 24, 3, 3), (16, 6, 5, 5), (20, 6, 5)],
                         ids=["linear", "conv2d", "conv5x5", "conv1d"])
def test_auto_never_worse_than_truncated_svd(template, shape):
    g = torch.Generator().manual_seed(2)
    m = torch.randn(shape[0], 6, generator=g) @ torch.randn(6, math.prod(shape[1:]), generator=g)
    w = (m + 0.3 * torch.randn(m.shape, generator=g)).reshape(shape)  # low rank plus noise: the SVD is good
    axes = dict(zip(("out", "in", "kh", "kw") if len(shape) != 3 else ("out", "in", "kw"), shape))
    choice = search(template, w, axes, budget=0.2)
    assert choice.params <= 0.2 * w.numel()
    assert choice.error <= _svd_error(w, choice.params) + 1e-5


def test_semi_tr_floor_needs_t_free_on_a_linear_weight():
    # a linear semi_tr at t >= 2 cannot hold a truncated SVD (its closing bond puts I_t on the out
    # core); with t free the search's floor is the ring at t = 1
    w = _weights()["lowrank+noise"].reshape(32, -1)[:, :64].contiguous()
    free = search("semi_tr", w, {"out": 32, "in": 64}, budget=0.3)
    assert free.error <= _svd_error(w, free.params) + 1e-5
    kept = search("semi_tr", w, {"out": 32, "in": 64}, budget=0.3, t=2)
    assert kept.options["t"] == 2 and math.isfinite(kept.error)


# ---------------------------------------------------------------------- trained layers
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, torch.tensor(y)


def _trained() -> tuple[nn.Module, torch.Tensor]:
    """A small CNN trained for a few steps on sklearn's digits."""
    x, y = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model, x[:128]


def _svd_error(w: torch.Tensor, params: int) -> float:
    m = w.detach().reshape(w.shape[0], -1).double()
    s = torch.linalg.svdvals(m)
    r = params // sum(m.shape)
    return float(s[r:].norm() / s.norm())


@pytest.fixture(scope="module")
def trained():
    return _trained()


@pytest.mark.parametrize("template", SEARCHABLE)
def test_trained_layers_are_never_worse_than_a_truncated_svd(trained, template):
    model, _ = trained
    for name in ("2", "5", "7"):
        layer = model.get_submodule(name)
        tn = adtn.encode(layer, template, budget=0.1)
        assert _rel(tn.weight, layer.weight) <= _svd_error(layer.weight, tn.num_tn_params) + 1e-5, name


def test_compress_auto_inherits_the_floor_and_reports_the_shapes(trained):
    model, _ = trained
    _out, report = compress(model, "auto", budget=0.1, skip=["0"])
    layers = dict(model.named_modules())
    for row in report.rows:
        assert row.weight_error <= _svd_error(layers[row.name].weight, row.params_after) + 1e-5, row.name
    searched = [r for r in report.rows if r.template in SEARCHABLE]
    assert all(r.shape for r in searched)
    assert all(f"shape {r.name}: " in str(report) for r in searched)
    assert report.to_dict()["rows"][0]["shape"] == report.rows[0].shape


# ---------------------------------------------------------------------- padding, calibration
def test_a_prime_axis_is_padded_when_that_helps():
    g = torch.Generator().manual_seed(4)
    w98 = torch.kron(torch.randn(14, 6, generator=g), torch.randn(7, 5, generator=g))  # exact at 98 x 30
    lin = _layer(w98[:97])  # 97 outputs: prime, no split fits the structure
    tn = adtn.encode(lin, "kronecker", budget=0.1)
    assert tn.shape_choice.axes == {"out": 98, "in": 30} and tn.pads == {"out": (97, 98)}
    assert _rel(tn.weight, lin.weight) < 1e-5
    assert "padded 98x30" in repr(tn)
    x = torch.randn(3, 30)
    torch.testing.assert_close(tn(x), lin(x), rtol=1e-4, atol=1e-4)


def test_calibration_inputs_rank_by_output_error():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 64, generator=g)
    x = torch.randn(32, 8, generator=g) @ torch.randn(8, 64, generator=g)  # inputs in an 8-dim subspace
    lin = _layer(w)
    by_weight = adtn.encode(lin, "tt", budget=0.2)
    by_output = adtn.encode(lin, "tt", budget=0.2, calibration=x)
    choice = by_output.shape_choice
    assert choice.criterion == "output" and by_weight.shape_choice.criterion == "weight"
    with torch.no_grad():
        err = _rel(by_output(x), lin(x))
        assert abs(err - choice.output_error) < 1e-4
        assert err <= _rel(by_weight(x), lin(x)) + 1e-6
    assert "out err=" in choice.summary()


# ---------------------------------------------------------------------- when auto applies, errors
def test_auto_is_the_default_only_when_it_is_safe():
    lin = nn.Linear(32, 64)
    assert adtn.encode(lin, "tt", budget=0.25).shape_choice is not None
    assert adtn.encode(lin, "tt", rank=3).shape_choice is None
    assert adtn.encode(lin, "tt", budget=0.25, init="random").shape_choice is None
    assert adtn.encode(lin, "tt", budget=0.25, shape=None).shape_choice is None
    assert adtn.encode(lin, "tt", budget=0.25, modes=((8, 8), (8, 4))).shape_choice is None
    assert adtn.encode(lin, "cp", budget=0.25).template == "cp"  # not searchable: the fixed rule
    auto = adtn.encode(lin, "tt", budget=0.25, init="random", shape="auto")
    assert auto.shape_choice is not None


def test_forced_shape_and_errors():
    lin = nn.Linear(32, 64)
    layer = adtn.encode(lin, "kronecker", budget=0.25, shape="auto", factors=((8, 4), (8, 8)))
    assert layer.shape_choice is None and layer.template_options["factors"] == ((8, 4), (8, 8))
    with pytest.raises(AdtnError, match="shape must be 'auto', 'default' or None"):
        adtn.encode(lin, "kronecker", budget=0.25, shape="best")
    with pytest.raises(AdtnError, match="needs budget="):
        adtn.encode(lin, "kronecker", rank=2, shape="auto")
    with pytest.raises(AdtnError, match="supports templates"):
        adtn.encode(lin, "cp", budget=0.25, shape="auto")
    with pytest.raises(TemplateError, match="not searchable"):
        search("cp", lin.weight, {"out": 64, "in": 32}, 0.25)
    with pytest.raises(AdtnError, match="no 'tt' shape fits budget 0.1 of 50 parameters.*rank-1 truncated SVD needs 15"):
        search("tt", torch.randn(5, 10), {"out": 5, "in": 10}, 0.1)
    bad = nn.Linear(32, 64)
    with torch.no_grad():
        bad.weight[3, 4] = float("nan")
    with pytest.raises(AdtnError, match="shape search: the weight contains NaN or inf"):
        adtn.encode(bad, "tt", budget=0.25)
    with pytest.raises(AdtnError, match=r"calibration inputs of shape \(5, 63\) do not fit the layer \(weight \(64, 32\)\)"):
        adtn.encode(lin, "tt", budget=0.3, calibration=torch.randn(5, 63))
    with pytest.raises(AdtnError, match="calibration inputs contain NaN or inf"):
        adtn.encode(lin, "tt", budget=0.3, calibration=torch.full((5, 32), float("nan")))
    with pytest.raises(AdtnError, match="needs apply="):
        search("tt", torch.randn(8, 4, 3, 3), {"out": 8, "in": 4, "kh": 3, "kw": 3}, 0.5,
               inputs=torch.randn(1, 4, 5, 5))


def test_semi_tensor_t_is_searched_or_kept():
    lin = _layer(_weights()["linear"])
    free = adtn.encode(lin, "semi_tt", budget=0.25)
    kept = adtn.encode(lin, "semi_tt", budget=0.25, t=2)
    assert free.shape_choice.options["t"] in (2, 4) and kept.template_options["t"] == 2
    assert math.isfinite(free.shape_choice.error)


def test_a_searched_layer_saves_and_loads(tmp_path):
    lin = _layer(_weights()["linear"])
    model = nn.Sequential(adtn.encode(lin, "tt", budget=0.2))
    adtn.save(model, tmp_path / "m.pt")
    back = adtn.load(tmp_path / "m.pt")
    assert back[0].shape_choice == model[0].shape_choice
    x = torch.randn(2, 64)
    torch.testing.assert_close(back(x), model(x))


def test_ring_error_on_a_big_weight_is_measured_not_guessed():
    # above 2**18 entries the finalists are not all decomposed; the ring's singular-value model
    # can be optimistic by far, so the leader is decomposed and the reported error is real
    from adtn.shapes import search
    from adtn.templates import get
    from adtn.templates.init_common import contract

    g = torch.Generator().manual_seed(11)
    w = torch.randn(64, 64, 9, 9, generator=g)  # 331,776 entries
    axes = {"out": 64, "in": 64, "kh": 9, "kw": 9}
    choice = search("tr", w, axes, 0.05)
    graph, tensors = get("tr").init(w, axes, rank=choice.rank, **choice.options)
    real = float(torch.linalg.vector_norm(contract(graph, tensors) - w) / torch.linalg.vector_norm(w))
    assert choice.error == pytest.approx(real, rel=1e-3) or choice.error >= real


def test_an_svd_like_choice_is_named_and_the_report_says_what_it_means_for_fine_tuning():
    from adtn.report import Report

    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 4, generator=g) @ torch.randn(4, 64, generator=g)  # rank 4: the SVD shape is exact
    layer = adtn.encode(_layer(w), "tt", budget=0.3)
    assert layer.shape_choice.tag == "svd" and "(SVD-like)" in layer.shape_choice.summary()
    text = str(Report.from_model(nn.Sequential(layer)))
    assert "SVD-like shapes err least as compressed but fine-tune worse" in text
    balanced = adtn.encode(_layer(w), "tt", budget=0.3, shape="default")
    assert "SVD-like shapes" not in str(Report.from_model(nn.Sequential(balanced)))

"""Data-aware compression (issue 14): covariances, whitening, calibrated inits, compress with calibration."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adtn
from adtn import templates
from adtn.calibration import Covariance, covariance, kron_error, kron_factors
from adtn.calibration.whitening import kron
from adtn.errors import AdtnError, ShapeError

DECOMPOSABLE = [n for n in templates.names() if templates.get(n).init is not None]


def _spd(n: int, seed: int) -> torch.Tensor:
    a = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return a @ a.T + 0.05 * torch.eye(n, dtype=torch.float64)


def _aniso(rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose variance spans three decades over rotated directions."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=g))[0]
    return (torch.randn(rows, n, generator=g) * torch.logspace(0, -3, n)) @ q.T


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------- covariance
def test_the_covariance_of_conv_patches_gives_the_exact_output_error():
    torch.manual_seed(0)
    for conv, x in ((nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, padding_mode="reflect"),
                     torch.randn(3, 4, 9, 8)),
                    (nn.Conv2d(3, 4, (3, 2), padding="same"), torch.randn(2, 3, 5, 6)),
                    (nn.Conv1d(4, 8, 3, padding=2, padding_mode="circular"), torch.randn(3, 4, 10))):
        cov = covariance(conv, x)
        approx = conv.weight.detach() + 0.1 * torch.randn_like(conv.weight)
        with torch.no_grad():
            ref = conv(x)
            got = torch.func.functional_call(conv, {"weight": approx, "bias": conv.bias}, (x,))
        assert cov.output_error(conv.weight, approx, conv.bias) == pytest.approx(_rel(got, ref), rel=1e-6)
        assert cov.groups == conv.groups and cov.input_shape == tuple(x.shape)


def test_a_dataloader_gives_the_batch_covariance():
    x = torch.randn(40, 2, 12)
    lin = nn.Linear(12, 5)
    whole = covariance(lin, x)
    loader = DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=7)
    streamed = covariance(lin, loader)
    assert streamed.count == 80 and torch.allclose(streamed.sigma, whole.sigma)
    assert torch.allclose(whole.matrix, x.reshape(-1, 12).double().T @ x.reshape(-1, 12).double() / 80)


def test_bad_calibration_input_is_a_clear_error():
    lin = nn.Linear(64, 48)
    with pytest.raises(ShapeError, match=r"TNLinear.encode: calibration inputs of shape \(5, 63\) do not fit the layer "
                                         r"\(weight \(48, 64\)\): it takes 64 input features"):
        adtn.encode(lin, "tt", rank=2, calibration=torch.randn(5, 63))
    with pytest.raises(ShapeError, match="calibration inputs contain NaN or inf"):
        adtn.encode(lin, "cp", rank=2, calibration=torch.full((5, 64), float("nan")))
    with pytest.raises(ShapeError, match="too few calibration samples: the layer saw none"):
        adtn.encode(lin, "cp", rank=2, calibration=torch.randn(0, 64))
    with pytest.raises(ShapeError, match="covariance over 10 features does not fit the layer's 64 input features"):
        adtn.encode(lin, "cp", rank=2, calibration=covariance(nn.Linear(10, 3), torch.randn(20, 10)))
    with pytest.raises(ShapeError, match=r"calibration inputs of shape \(2, 3, 8, 8\) do not fit .* it takes \(N, 4,"):
        adtn.encode(nn.Conv2d(4, 8, 3), "tucker2", rank=2, calibration=torch.randn(2, 3, 8, 8))
    with pytest.raises(ShapeError, match="calibration must be a tensor batch"):
        adtn.encode(lin, "cp", rank=2, calibration=3.0)
    with pytest.warns(UserWarning, match="3 calibration samples for 64 input features"):
        adtn.encode(lin, "cp", rank=2, calibration=torch.randn(3, 64))
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ShapeError, match=r"compress: layer '0' \(Linear\): too few calibration samples"):
        adtn.compress(model, "tt", budget=0.5, calibration=torch.randn(0, 16))
    with pytest.raises(ShapeError, match=r"NaN or inf at the input of layer\(s\) \['2'\]"):
        bad = copy.deepcopy(model)
        with torch.no_grad():
            bad[0].bias[0] = float("inf")
        adtn.compress(bad, "tt", budget=0.5, calibration=torch.randn(8, 16))
    with pytest.raises(AdtnError, match="sequential=True passes over the calibration data once per layer"):
        adtn.compress(model, "tt", budget=0.5, calibration=(x for x in [torch.randn(4, 16)]), sequential=True)
    with pytest.raises(AdtnError, match="allocation='global' needs calibration="):
        adtn.compress(model, "tt", budget=0.5, allocation="global")
    with pytest.raises(AdtnError, match=r"allocation must be one of \['uniform', 'global'\]"):
        adtn.compress(model, "tt", budget=0.5, allocation="greedy", calibration=torch.randn(4, 16))


# ---------------------------------------------------------------------- whitening
def test_kronecker_factors_are_exact_on_a_kronecker_product():
    a, b, c = _spd(3, 1), _spd(4, 2), _spd(2, 3)
    sigma = kron([a, b, c])
    for method in ("marginal", "nearest"):
        f = kron_factors(sigma, (3, 4, 2), method=method)
        assert kron_error(sigma, f, (3, 4, 2)) < 1e-10
    grouped = kron_factors(sigma, (3, 4, 2), groups=[[0, 2], [1]])  # legs 0 and 2 on one core
    assert kron_error(sigma, grouped, (3, 4, 2), [[0, 2], [1]]) < 1e-10
    noisy = sigma + 0.5 * _spd(24, 4)
    near, marg = kron_factors(noisy, (3, 4, 2)), kron_factors(noisy, (3, 4, 2), method="marginal")
    assert 0 < kron_error(noisy, near, (3, 4, 2)) <= kron_error(noisy, marg, (3, 4, 2)) + 1e-12


def test_whitened_svd_is_the_closed_form():
    torch.manual_seed(0)
    lin = nn.Linear(32, 24, bias=False).double()
    x = _aniso(200, 32).double()
    cov = covariance(lin, x, damping=0.0)
    L = torch.linalg.cholesky(cov.matrix)
    u, s, vh = torch.linalg.svd(lin.weight.detach() @ L)
    r = 5
    closed = (u[:, :r] * s[:r]) @ vh[:r] @ torch.linalg.inv(L)
    for template in ("cp", "tucker2"):
        layer = adtn.encode(lin, template, rank=r, calibration=cov)
        torch.testing.assert_close(layer.weight.detach(), closed, atol=1e-8, rtol=1e-6)
    with torch.no_grad():
        assert _rel(x @ closed.T, lin(x)) < _rel(adtn.encode(lin, "cp", rank=r)(x), lin(x))


def test_kronecker_whitening_is_exact_when_sigma_is_a_kronecker_product():
    torch.manual_seed(0)
    oa, ia, ob, ib, r = 4, 3, 5, 4, 2
    lin = nn.Linear(ia * ib, oa * ob, bias=False).double()
    sa, sb = _spd(ia, 5), _spd(ib, 6)
    sigma = torch.kron(sa, sb)
    cov = Covariance(sigma[None], torch.zeros(1, ia * ib, dtype=torch.float64), 1000, damping=0.0)
    layer = adtn.encode(lin, "kronecker", rank=r, factors=((oa, ia), (ob, ib)), calibration=cov)
    L = torch.kron(torch.linalg.cholesky(sa), torch.linalg.cholesky(sb))
    wl = lin.weight.detach() @ L  # Van Loan: the best rank-r Kronecker sum of W L from the SVD of its rearrangement
    rearranged = wl.reshape(oa, ob, ia, ib).permute(0, 2, 1, 3).reshape(oa * ia, ob * ib)
    s = torch.linalg.svdvals(rearranged)
    best = math.sqrt(float(s[r:].pow(2).sum() / s.pow(2).sum()))
    assert cov.output_error(lin.weight, layer.weight) == pytest.approx(best, rel=1e-6)
    plain = adtn.encode(lin, "kronecker", rank=r, factors=((oa, ia), (ob, ib)))
    assert cov.output_error(lin.weight, plain.weight) > best * 1.05


# ---------------------------------------------------------------------- every template: never worse
def _every_template(layer: nn.Module, x: torch.Tensor, budget: float) -> dict[str, tuple[float, float]]:
    found = {}
    for name in DECOMPOSABLE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                plain = adtn.encode(layer, name, budget=budget, shape="default")
            except AdtnError:  # a template that does not fit this layer at all (checked below)
                continue
            data = adtn.encode(layer, name, budget=budget, shape="default", calibration=x)
        with torch.no_grad():
            found[name] = (_rel(plain(x), layer(x)), _rel(data(x), layer(x)))
    return found


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_calibration_never_makes_the_output_error_worse(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = nn.Linear(48, 32), _aniso(256, 48)
    else:
        layer = nn.Conv2d(8, 16, 3, padding=1)
        mix = torch.linalg.qr(torch.randn(8, 8))[0] * torch.logspace(0, -2, 8)  # correlated, decaying channels
        x = F.avg_pool2d(torch.einsum("nchw,dc->ndhw", torch.randn(16, 8, 12, 12), mix), 3, 1, 1)
    found = _every_template(layer, x, 0.3)
    assert len(found) >= len(DECOMPOSABLE) - 3  # semi-tensor t may not fit a conv at its default
    for name, (plain, data) in found.items():
        assert data <= plain + 1e-6, name
    better = [n for n, (p, d) in found.items() if d < 0.8 * p]
    assert len(better) >= len(found) // 2, found  # strongly anisotropic inputs: most gain a lot


def test_the_refinement_lowers_the_output_error_beyond_kronecker_whitening():
    from adtn.calibration.init import calibrated_init
    from adtn.templates.init_common import contract

    torch.manual_seed(0)
    w, x = torch.randn(24, 60, dtype=torch.float64), _aniso(400, 60).double()
    cov = covariance(nn.Linear(60, 24), x)
    axes, opts = {"out": 24, "in": 60}, {"modes": ((4, 6), (6, 10)), "rank": 4}
    errors = {}
    for steps in (0, 100):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a refinement that fails says so
            graph, tensors = calibrated_init("tt", w, axes, cov, steps=steps, **opts)
        errors[steps] = cov.output_error(w, contract(graph, tensors))
    assert errors[100] < 0.7 * errors[0]


def test_a_zero_padded_layer_is_whitened_on_its_real_features():
    torch.manual_seed(0)
    lin, x = nn.Linear(29, 24), _aniso(200, 29)  # 29 inputs: prime, TT pads them
    plain = adtn.encode(lin, "tt", rank=3)
    data = adtn.encode(lin, "tt", rank=3, calibration=x)
    assert "in" in data.pads
    with torch.no_grad():
        assert _rel(data(x), lin(x)) < 0.8 * _rel(plain(x), lin(x))


def test_deep_adtn_fit_minimises_the_output_error():
    torch.manual_seed(0)
    lin, x = nn.Linear(16, 16), _aniso(128, 16)
    opts = {"steps": 300, "patience": None}
    plain = adtn.encode(lin, "adtn", depth=1, init="fit", fit_options=opts)
    data = adtn.encode(lin, "adtn", depth=1, init="fit", fit_options=opts, calibration=x)
    with torch.no_grad():
        assert _rel(data(x), lin(x)) < _rel(plain(x), lin(x))


def test_the_shape_search_ranks_by_the_whitened_error():
    torch.manual_seed(0)
    lin, x = nn.Linear(64, 48), _aniso(256, 64)
    layer = adtn.encode(lin, "tt", budget=0.25, calibration=x)
    choice = layer.shape_choice
    with torch.no_grad():
        assert choice.criterion == "output" and choice.output_error == pytest.approx(_rel(layer(x), lin(x)), rel=1e-4)
        assert _rel(layer(x), lin(x)) <= _rel(adtn.encode(lin, "tt", budget=0.25)(x), lin(x)) + 1e-6


# ---------------------------------------------------------------------- compress
def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


def test_sequential_matches_a_hand_loop():
    model, x = _mlp(), _aniso(128, 24)
    out, report = adtn.compress(model, "tt", rank=2, calibration=x, sequential=True)
    hand = copy.deepcopy(model)
    for k in (0, 2, 4):
        seen: list[torch.Tensor] = []
        hook = hand[k].register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            hand(x)
        hook.remove()
        hand[k] = adtn.encode(model[k], "tt", rank=2, calibration=seen[0])
    with torch.no_grad():
        torch.testing.assert_close(out(x), hand(x))
        once, _ = adtn.compress(model, "tt", rank=2, calibration=x)
        assert not torch.allclose(once(x), out(x))  # the one-pass covariances differ downstream
    assert all(r.calib_error is not None and r.weight_error is not None for r in report.rows)


def test_global_allocation_shares_by_output_error_within_the_budget():
    model, x = _mlp(), _aniso(256, 24)
    with torch.no_grad():  # layer 2 is nearly rank 3: it needs far less than the others
        u, _, vh = torch.linalg.svd(model[2].weight)
        model[2].weight.copy_(u[:, :3] @ torch.diag(torch.tensor([3.0, 2.0, 1.0])) @ vh[:3])
    budget = 0.3
    _out, report = adtn.compress(model, "cp", budget=budget, calibration=x, allocation="global")
    shares = {r.name: r.share for r in report.rows}
    assert report.allocation == "global" and report.fraction <= budget * 1.1
    assert shares["2"] < budget < max(shares["0"], shares["4"])
    assert "allocation global (by output error per parameter): 0 " in str(report)
    _, uniform = adtn.compress(model, "cp", budget=budget, calibration=x)
    assert uniform.allocation == "uniform"
    assert report.model_error < uniform.model_error
    assert sum(r.calib_error ** 2 for r in report.rows) < sum(r.calib_error ** 2 for r in uniform.rows)


def test_compress_takes_a_dataloader():
    model, x = _mlp(), _aniso(64, 24)
    loader = DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=16)
    a, ra = adtn.compress(model, "tucker2", budget=0.3, calibration=loader)
    b, rb = adtn.compress(model, "tucker2", budget=0.3, calibration=x)
    assert [r.params_after for r in ra.rows] == [r.params_after for r in rb.rows]
    for r, s in zip(ra.rows, rb.rows):
        assert r.calib_error == pytest.approx(s.calib_error, rel=1e-4, abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-4, rtol=1e-4)
    kwargs, _ = adtn.compress(model, "tucker2", budget=0.3, calibration={"input": x})
    assert isinstance(kwargs[0], adtn.TNLinear)
    # a plain list of keyword batches or (x, y) pairs is a list of batches, passed over as often as needed
    for listed in ([{"input": x[i:i + 16]} for i in range(0, 64, 16)], [(x[i:i + 16], None) for i in range(0, 64, 16)]):
        c, rc = adtn.compress(model, "tucker2", budget=0.3, calibration=listed, sequential=True)
        d, rd = adtn.compress(model, "tucker2", budget=0.3, calibration=x, sequential=True)
        for r, s in zip(rc.rows, rd.rows):
            assert r.calib_error == pytest.approx(s.calib_error, rel=1e-4, abs=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(c(x), d(x), atol=1e-4, rtol=1e-4)


def test_calibrated_compress_beats_the_plain_one_on_its_data():
    model, x = _mlp(), _aniso(256, 24)
    plain, rp = adtn.compress(model, "tt", budget=0.3, calibration=x, shape="default")
    with torch.no_grad():
        ref = model(x)
        plain_err = _rel(adtn.compress(model, "tt", budget=0.3, shape="default")[0](x), ref)
        assert _rel(plain(x), ref) < plain_err
    assert all(r.calib_error is not None for r in rp.rows)


class _TokenModel(nn.Module):
    """A tokenizer-fed stand-in: embedding, one Linear on every token, one on the mean (a pooler)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.token = nn.Linear(8, 6)
        self.pool = nn.Linear(6, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.token(self.emb(input_ids))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.pool((h * m).sum(1) / m.sum(1))


def test_padding_tokens_are_left_out_of_the_covariance():
    from adtn.calibration.collect import collect

    torch.manual_seed(0)
    model = _TokenModel()
    long, short = torch.tensor([[3, 5, 7, 9, 11]]), torch.tensor([[4, 6, 8]])
    padded = {"input_ids": torch.cat([long, F.pad(short, (0, 2))]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    apart = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)} for ids in (long, short)]
    layers = {"token": model.token, "pool": model.pool}
    got, want = collect(model, layers, padded).covariances, collect(model, layers, apart).covariances
    assert got["token"].count == want["token"].count == 8  # real tokens only, not 10
    torch.testing.assert_close(got["token"].sigma, want["token"].sigma)
    assert got["pool"].count == 2  # the pooler's (batch, features) input ignores the (batch, tokens) mask

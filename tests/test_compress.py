import copy
import json

import pytest
import torch
from torch import nn

from adtn.cli import main
from adtn.compress import compress, default_candidates
from adtn.errors import AdtnError, RankError, TemplateError
from adtn.layers import TNConv1d, TNConv2d, TNLayer, TNLinear
from adtn.report import Report, layer_flops
from adtn.templates import names

BUDGET = 0.3
TN_OF = {nn.Linear: TNLinear, nn.Conv2d: TNConv2d, nn.Conv1d: TNConv1d}


def small_cnn() -> nn.Sequential:
    """Two convs, two linears (the issue's test model)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def batch() -> torch.Tensor:
    return torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def dense_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m) in TN_OF}


def tn_layers(model: nn.Module) -> dict[str, TNLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, TNLayer)}


def check_result(original: nn.Module, out: nn.Module, report: Report, budget: float, x: torch.Tensor) -> None:
    """Forward works, rows match the TN modules, parameters within budget +- 10%."""
    assert out(x).shape == original(x).shape
    dense, tn = dense_layers(original), tn_layers(out)
    assert [r.name for r in report.rows] == list(tn)
    for row in report.rows:
        layer = tn[row.name]
        assert isinstance(layer, TN_OF[type(dense[row.name])]) and row.type == type(dense[row.name]).__name__
        assert row.template == layer.template and row.params_after == layer.num_tn_params
        assert row.params_before == dense[row.name].weight.numel()
        with torch.no_grad():
            error = float((layer.weight - dense[row.name].weight).norm() / dense[row.name].weight.norm())
        assert row.weight_error == pytest.approx(error, rel=1e-4, abs=1e-6)
    total = sum(m.num_tn_params for m in tn.values()) / sum(dense[n].weight.numel() for n in tn)
    assert abs(total - budget) <= 0.1 * budget and report.fraction == pytest.approx(total)


# ---------------------------------------------------------------------- policies
@pytest.mark.parametrize("policy", ["hybrid", "mixed", "auto"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_policies_on_a_small_cnn(policy, calibrated):
    model, x = small_cnn(), batch()
    out, report = compress(model, policy, budget=BUDGET, calibration=x if calibrated else None)
    check_result(model, out, report, BUDGET, x)
    assert len(report.rows) == 4
    assert all((r.calib_error is not None) == calibrated for r in report.rows)
    assert (report.model_error is not None) == calibrated
    if policy == "hybrid":
        assert [r.template for r in report.rows] == ["tt", "tt", "ht", "ht"]
    if policy == "mixed":
        assert all(r.template in ("tucker2", "cp") and set(r.candidates) == {"tucker2", "cp"} for r in report.rows)
        assert all(r.candidates[r.template] == min(r.candidates.values()) for r in report.rows)


@pytest.mark.parametrize("template", [n for n in names() if n != "adtn"])
def test_every_template_as_policy_meets_the_budget_or_says_why(template):
    model, x = small_cnn(), batch()
    try:
        out, report = compress(model, template, budget=BUDGET)
    except AdtnError as err:  # e.g. semi-tensor templates whose t does not divide a kernel size
        assert "layer '" in str(err) and template in str(err)
        return
    check_result(model, out, report, BUDGET, x)
    assert {r.template for r in report.rows} == {template}


def test_adtn_policy_with_random_init():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
    out, report = compress(model, "adtn", budget=0.5, init="random")
    check_result(model, out, report, 0.5, torch.randn(3, 64))
    assert all("depth" in r.options for r in report.rows)


def cp_kernel(o, c, k, rank):
    f = [torch.randn(n, rank) for n in (o, c, k, k)]
    return torch.einsum("ar,br,cr,dr->abcd", *f)


def tucker2_kernel(o, c, k, rank):
    core = torch.randn(rank, rank, k, k)
    u_out, u_in = torch.linalg.qr(torch.randn(o, rank))[0], torch.linalg.qr(torch.randn(c, rank))[0]
    return torch.einsum("xykl,ox,iy->oikl", core, u_out, u_in)


@pytest.mark.parametrize("calibrated", [False, True])
def test_mixed_picks_the_format_each_kernel_has(calibrated):
    # conv 0 is exactly Tucker-2 rank 2 (132 params, 2.9%); conv 2 exactly CP rank 4 (280 params, 3.0%).
    # At 3.5% each, Tucker-2 is exact on conv 0 (CP rank 2 is not) and CP on conv 2 (Tucker-2 rank 3 is not).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        model[0].weight.copy_(tucker2_kernel(32, 16, 3, 2))
        model[2].weight.copy_(cp_kernel(32, 32, 3, 4))
    x = torch.randn(2, 16, 6, 6)
    _out, report = compress(model, "mixed", budget=0.035, calibration=x if calibrated else None, skip=("8",))
    rows = {r.name: r for r in report.rows}
    assert rows["0"].template == "tucker2" and rows["2"].template == "cp"
    assert rows["0"].candidates["tucker2"] < 1e-3 < rows["0"].candidates["cp"]
    assert rows["2"].candidates["cp"] < 1e-2 < rows["2"].candidates["tucker2"]
    assert rows["0"].weight_error < 1e-3 and rows["2"].weight_error < 1e-2
    assert abs(report.fraction - 0.035) <= 0.0035


def test_auto_is_never_worse_than_a_truncated_svd():
    torch.manual_seed(0)
    lin = nn.Linear(96, 48)
    with torch.no_grad():  # a decaying spectrum, like trained weights
        u, _, vh = torch.linalg.svd(torch.randn(48, 96), full_matrices=False)
        lin.weight.copy_(u @ torch.diag(0.8 ** torch.arange(48.0)) @ vh)
    out, report = compress(lin, "auto", budget=0.2)  # a bare layer is a model too
    assert isinstance(out, TNLinear) and report.rows[0].name == "."
    assert "cp" in report.rows[0].candidates  # cp of a matrix is its truncated SVD
    rank = report.rows[0].params_after // (96 + 48)
    s = torch.linalg.svdvals(lin.weight.detach())
    svd_error = float(s[rank:].norm() / s.norm())
    assert report.rows[0].weight_error <= svd_error + 1e-5


def test_default_candidates_leave_out_slow_and_semi_templates():
    pool = default_candidates("conv")
    assert "adtn" not in pool and not any(n.startswith("semi_") for n in pool) and {"tt", "cp", "tucker2"} <= set(pool)


def test_candidates_restrict_auto_and_keep_the_svd_for_linear_layers():
    model, x = small_cnn(), batch()
    _out, report = compress(model, "auto", budget=BUDGET, candidates=("tt", "ht"), calibration=x)
    for r in report.rows:
        assert set(r.candidates) == ({"tt", "ht", "cp"} if r.type == "Linear" else {"tt", "ht"})


# ---------------------------------------------------------------------- dict / callable policies, sizes
def test_dict_policy_with_patterns_options_and_dense_layers():
    model, x = small_cnn(), batch()
    policy = {"0": None, "2": "tucker2", "6": {"template": "tt", "rank": 2}, "[68]": "mixed"}
    out, report = compress(model, policy, budget=BUDGET)
    assert out(x).shape == (4, 10)
    rows = {r.name: r for r in report.rows}
    assert list(rows) == ["2", "6", "8"] and isinstance(out[0], nn.Conv2d)
    assert rows["2"].template == "tucker2" and rows["6"].options["rank"] == 2 and rows["8"].template in ("tucker2", "cp")
    assert ("0", "the policy leaves it dense") in report.skipped
    assert abs(report.fraction - BUDGET) <= 0.1 * BUDGET  # the fixed layer counts; the others share the rest


def test_a_list_of_templates_is_a_choice():
    _out, report = compress(small_cnn(), {"*": {"template": ["tt", "tucker2"], "d": 2}}, budget=BUDGET)
    assert all(set(r.candidates) == {"tt", "tucker2"} and r.template in r.candidates for r in report.rows)
    assert all(r.options["modes"] and len(r.options["modes"][0]) == 2 for r in report.rows if r.template == "tt")


def test_callable_policy_gets_name_and_module():
    seen = []

    def policy(name, module):
        seen.append(name)
        return "cp" if isinstance(module, nn.Conv2d) else None

    _out, report = compress(small_cnn(), policy, budget=BUDGET)
    assert seen == ["0", "2", "6", "8"] and [r.name for r in report.rows] == ["0", "2"]
    _out, report = compress(small_cnn(), lambda name: "tt" if name == "6" else None, rank=3)
    assert [r.name for r in report.rows] == ["6"] and report.rows[0].options["rank"] == 3 and report.budget is None


def test_sizes_without_budget_and_conflicts():
    _out, report = compress(small_cnn(), "tucker2", rank=2)
    assert all(r.options["rank"] == 2 for r in report.rows)
    with pytest.raises(RankError, match=r"layer '0' \(Conv2d\): give budget= \(a fraction of the parameters\) or a size"):
        compress(small_cnn(), "tt")
    with pytest.raises(RankError, match="not both"):
        compress(small_cnn(), "tt", budget=0.2, rank=2)


def test_conv1d_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 10, 8))
    x = torch.randn(2, 4, 10)
    out, report = compress(model, "hybrid", budget=0.4, calibration=x)
    check_result(model, out, report, 0.4, x)
    assert report.rows[0].type == "Conv1d" and report.rows[0].flops_before == 2 * 16 * 4 * 3 * 10


# ---------------------------------------------------------------------- skip, inplace, training mode
def test_skip_by_name_pattern_and_type():
    model, x = small_cnn(), batch()
    out, report = compress(model, "hybrid", budget=BUDGET, skip=("0", "8"))
    assert [r.name for r in report.rows] == ["2", "6"]
    assert type(out[0]) is nn.Conv2d and type(out[8]) is nn.Linear and torch.equal(out[0].weight, model[0].weight)
    assert [name for name, _ in report.skipped] == ["0", "8"]
    check_result(model, out, report, BUDGET, x)
    out, report = compress(model, "hybrid", budget=BUDGET, skip=nn.Linear)
    assert [r.name for r in report.rows] == ["0", "2"]
    nested = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), nn.Linear(8, 8))
    out, report = compress(nested, "tt", budget=0.6, skip=("0",))  # a name skips its submodules
    assert [r.name for r in report.rows] == ["1"]
    with pytest.raises(AdtnError, match="skip='conv9' matches no module"):
        compress(model, "hybrid", budget=BUDGET, skip=("conv9",))


def test_inplace_false_leaves_the_original_untouched():
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    out, _ = compress(model, "auto", budget=BUDGET, calibration=batch())
    assert out is not model and all(type(m) is not TNLinear for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out, _ = compress(model, "tt", budget=BUDGET, inplace=True)
    assert out is model and isinstance(model[0], TNConv2d)


def test_training_mode_is_kept():
    model = small_cnn().train()
    out, _ = compress(model, "tt", budget=BUDGET, calibration=batch())
    assert all(m.training for m in out.modules())
    out, _ = compress(model.eval(), "tt", budget=BUDGET)
    assert not any(m.training for m in out.modules())


# ---------------------------------------------------------------------- errors
def test_nothing_to_compress_is_a_clear_error():
    with pytest.raises(AdtnError, match=r"no nn.Linear/nn.Conv1d/nn.Conv2d layers left to compress in Sequential"):
        compress(nn.Sequential(nn.ReLU(), nn.Flatten()), "tt", budget=0.5)
    with pytest.raises(AdtnError, match=r"after skip=\(<class 'torch.nn.modules.linear.Linear'>,\)"):
        compress(nn.Sequential(nn.Linear(4, 4)), "tt", budget=0.5, skip=nn.Linear)


def test_a_layer_used_twice_is_replaced_everywhere_and_stays_shared():
    shared = nn.Linear(32, 32)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = shared, shared, nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.b(torch.relu(self.a(x))))

    model = Twice()
    out, report = compress(model, "tt", budget=0.3)
    assert isinstance(out.a, TNLinear) and out.b is out.a and model.a is shared
    assert [r.name for r in report.rows] == ["a", "head"]
    assert report.rows[1].params_after <= 0.9 * 128  # filling the budget grows no layer past 90% of its weight
    assert report.model_params_after == sum(p.numel() for p in out.parameters())


def test_a_calibration_batch_that_does_not_fit_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    with pytest.raises(AdtnError, match=r"calibration batch \(\(2, 4, 8, 8\)\) does not run through the model"):
        compress(model, "auto", budget=0.3, calibration=torch.randn(2, 4, 8, 8))
    with pytest.raises(AdtnError, match=r"gives NaN or inf at the input of layer\(s\) \['0', '3'\]"):
        compress(model, "auto", budget=0.3, calibration=torch.full((2, 3, 8, 8), float("nan")))


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(TemplateError, match=r"unknown policy 'foo'; valid: template names \[.*'tt'.*\], 'hybrid', "
                                            r"'mixed', 'auto'"):
        compress(small_cnn(), "foo", budget=0.3)
    with pytest.raises(TemplateError, match="unknown policy 'bar'"):
        compress(small_cnn(), {"0": "bar"}, budget=0.3)


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, True, "0.1"])
def test_budget_must_be_a_fraction(budget):
    with pytest.raises(RankError, match=r"budget .* in \(0, 1\]"):
        compress(small_cnn(), "tt", budget=budget)


def test_infeasible_budget_names_the_layers():
    with pytest.raises(RankError, match=r"below what the layers can get to.*'8' \(tt"):
        compress(small_cnn(), "tt", budget=0.01)


def test_a_budget_between_two_sizes_warns():
    # tt on 8 x 8: 40 or 60 parameters; 0.8 * 64 = 51 is more than 10% from both
    with pytest.warns(UserWarning, match=r"achieved 0.6250 .* more than 10% from budget=0.8"):
        _out, report = compress(nn.Linear(8, 8), "tt", budget=0.8)
    assert report.rows[0].params_after == 40


def test_a_layer_below_its_share_is_noted_and_the_others_pay():
    _out, report = compress(small_cnn(), "tucker2", budget=0.06)
    assert abs(report.fraction - 0.06) <= 0.006
    assert any("above its share" in r.note for r in report.rows)
    assert "note: " in str(report)


# ---------------------------------------------------------------------- report
def test_report_table_markdown_and_dict():
    model, x = small_cnn(), batch()
    _out, report = compress(model, "hybrid", budget=BUDGET, calibration=x, skip=("0",))
    text = str(report)
    for col in ("layer", "template", "ranks / options", "params", "ratio", "FLOPs", "weight err", "calib err"):
        assert col in text
    assert "total" in text and "left dense: 0 (skip)" in text and "policy hybrid" in text
    md = report.to_markdown()
    assert md.startswith("| layer |") and "| **total** |" in md
    data = json.loads(json.dumps(report.to_dict()))
    assert [r["name"] for r in data["rows"]] == ["2", "6", "8"]
    assert data["totals"]["params_after"] == report.total_params_after and data["budget"] == BUDGET
    assert data["rows"][0]["calib_error"] is not None and data["skipped"] == [["0", "skip"]]


def test_flops_at_the_calibration_size():
    model, x = small_cnn(), batch()
    _out, report = compress(model, "tucker2", budget=BUDGET, calibration=x, forward="dense")
    conv = report.rows[0]
    assert conv.flops_before == 2 * 8 * 4 * 9 * 8 * 8 and conv.flops_after == conv.flops_before
    assert conv.forward == "dense"
    _out, report = compress(model, "tucker2", budget=0.2, calibration=x, forward="direct")
    conv = report.rows[1]
    assert conv.forward == "direct/tucker2" and conv.flops_after < conv.flops_before
    # without calibration: a conv per output position, a linear layer per row
    assert layer_flops(model[2]) == (2 * 16 * 8 * 9, "dense") and layer_flops(model[6]) == (2 * 64 * 32, "dense")


def test_report_from_a_saved_model(tmp_path):
    import adtn.api

    out, report = compress(small_cnn(), "hybrid", budget=BUDGET, calibration=batch())
    adtn.api.save(out, tmp_path / "m.pt")
    again = Report.from_model(adtn.api.load(tmp_path / "m.pt"), input_shape=(4, 4, 8, 8))
    assert [(r.name, r.template, r.params_after, r.flops_after) for r in again.rows] == \
        [(r.name, r.template, r.params_after, r.flops_after) for r in report.rows]
    assert again.model_params_after == report.model_params_after


# ---------------------------------------------------------------------- CLI
def test_cli_compress_then_info(tmp_path, capsys):
    torch.save(small_cnn(), tmp_path / "cnn.pt")
    args = ["compress", str(tmp_path / "cnn.pt"), "--policy", "hybrid", "--budget", "0.3", "--skip", "0",
            "--input-shape", "2,4,8,8", "-o", str(tmp_path / "out.pt")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "policy hybrid" in text and "left dense: 0" in text and (tmp_path / "out.pt").exists()
    assert main(["info", str(tmp_path / "out.pt"), "--markdown"]) == 0
    assert "| 2 | Conv2d | tt |" in capsys.readouterr().out
    assert main(["compress", str(tmp_path / "cnn.pt"), "--policy", "tt", "--option", "rank=2", "-o",
                 str(tmp_path / "o2.pt")]) == 0


def test_cli_compress_from_a_factory(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_models.py").write_text("from torch import nn\n\ndef net():\n    return nn.Sequential("
                                           "nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["compress", "my_models:net", "--policy", "auto", "--budget", "0.5", "-o",
                 str(tmp_path / "o.pt")]) == 0
    assert "policy auto" in capsys.readouterr().out


def test_cli_compress_errors(tmp_path, capsys):
    torch.save(small_cnn(), tmp_path / "cnn.pt")
    assert main(["compress", str(tmp_path / "cnn.pt"), "--policy", "nope", "--budget", "0.3"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["compress", "no_such_file.pt", "--budget", "0.3"]) == 2
    assert "not of the form package.module:factory" in capsys.readouterr().err
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    assert main(["compress", str(tmp_path / "sd.pt"), "--budget", "0.3"]) == 2
    assert "state_dict" in capsys.readouterr().err


def test_cli_compress_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("MODEL", "--policy", "--budget", "--skip", "--input-shape", "--calibration", "--option", "--output"):
        assert flag in text


def test_auto_policy_searches_the_shapes_and_reports_them():
    model, x = small_cnn(), batch()
    _out, report = compress(model, "auto", budget=BUDGET, calibration=x, candidates=("kronecker", "tt"))
    searched = [r for r in report.rows if r.template in ("kronecker", "tt")]
    assert searched and all("out err=" in r.shape and "candidates" in r.shape for r in searched)
    assert all(f"shape {r.name}: {r.shape}" in str(report) for r in searched)
    _fixed, fixed_report = compress(model, "auto", budget=BUDGET, candidates=("tt",), shape="default")
    assert all(r.shape == "" for r in fixed_report.rows)


def test_layers_whose_network_gains_little_stay_dense_and_are_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    policy = {"0": {"template": "tt", "rank": 5}, "3": "tt"}  # TT rank 5 holds the 144-weight conv in 141
    out, report = compress(model, policy, budget=0.5)
    assert [r.name for r in report.rows] == ["3"] and type(out[0]) is nn.Conv2d
    assert report.skipped == [("0", ("its 'tt' network would take 141 of the weight's 144 parameters (98%), a gain "
                                    "under 10%"))]
    assert abs(report.fraction - 0.5) <= 0.05  # the budget is shared again by the layers compressed
    assert "left dense: 0 (its 'tt' network would take 141" in str(report)
    _out, report = compress(model, "tucker2", rank=100)
    assert report.rows == [] and [name for name, _ in report.skipped] == ["0", "3"]
    assert "(1019%), more than the dense weight" in report.skipped[1][1]
    _out, report = compress(model, policy, budget=0.5, min_gain=0.0)
    assert [r.name for r in report.rows] == ["0", "3"]
    _out, report = compress(model, "tt", budget=0.95)  # under a budget every layer is sized to gain >= 10%
    assert [r.name for r in report.rows] == ["0", "3"] and all(r.params_after <= 0.9 * r.params_before
                                                               for r in report.rows)
    with pytest.raises(AdtnError, match=r"min_gain is the share .* in \[0, 1\), got 1.5"):
        compress(model, "tt", budget=0.5, min_gain=1.5)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x)
        return self.head(y.mean(1))


def test_multihead_attention_compresses_out_proj_and_reports_in_proj(tmp_path):
    import adtn

    torch.manual_seed(0)
    out, report = compress(Attention(), "tt", budget=0.3)  # no skip=
    assert isinstance(out.attn.out_proj, TNLinear) and [r.name for r in report.rows] == ["attn.out_proj", "head"]
    assert report.skipped == [("attn.in_proj_weight", ("a q/k/v projection parameter of nn.MultiheadAttention, "
                                                      "not an nn.Linear layer (only its out_proj is one)"))]
    x = torch.randn(2, 5, 32)
    out(x).sum().backward()  # the attention reads out_proj.weight / .bias, rebuilt from the network
    assert all(p.grad is not None for p in out.attn.out_proj.tn.parameters())
    with torch.no_grad():
        train = out(x)
        assert torch.allclose(out.eval()(x), train, atol=1e-5)
    adtn.save(out, tmp_path / "attn.pt")
    again = adtn.load_into(Attention(), tmp_path / "attn.pt").eval()
    with torch.no_grad():
        assert torch.allclose(again(x), out(x), atol=1e-6)
    _out, report = compress(Attention(), "tt", budget=0.3, skip="attn")
    assert report.skipped == [("attn.out_proj", "skip")]


def test_a_layer_no_network_fits_stays_dense_with_the_reason():
    """semi_tucker's t=2 divides neither axis of a 3 -> 5 linear, so no size fits it: the
    whole-model policy keeps that layer dense and says why, instead of failing the model."""
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 64))
    small, report = compress(model, "semi_tucker", budget=0.5)
    assert isinstance(small[0], nn.Linear) and isinstance(small[2], TNLinear)
    reasons = dict(report.skipped)
    assert "no network of the policy fits it" in reasons["0"] and "t=2 divides none" in reasons["0"]
    assert "0" in str(report)
    small(torch.randn(2, 3)).sum().backward()


def test_no_layer_any_network_fits_is_a_clear_error():
    with pytest.raises(AdtnError, match="no layer of Sequential.*can take the policy's networks"):
        compress(nn.Sequential(nn.Linear(3, 5)), "semi_tucker", budget=0.5)


class _DictOutput(nn.Module):
    """Returns what a transformers model does: a dict of tensors (and an integer one, not compared)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.tanh(self.body(x))
        return {"hidden": hidden, "ids": x.argmax(-1), "logits": self.head(hidden)}


def test_model_error_covers_every_float_tensor_of_a_dict_output():
    torch.manual_seed(0)
    model, x = _DictOutput(), torch.randn(64, 16)
    out, report = compress(model, "cp", budget=0.4, calibration=x)
    with torch.no_grad():
        a, b = out(x), model(x)
    diff = torch.cat([(a[k] - b[k]).flatten() for k in ("hidden", "logits")])
    ref = torch.cat([b[k].flatten() for k in ("hidden", "logits")])
    assert report.model_error == pytest.approx(float(diff.norm() / ref.norm()), rel=1e-5)
    assert report.model_error > 0

"""FLOPs of every forward form come from the layer (``TNLayer.flops``), checked against the ops
torch counts when the layer runs, and ``adtn.compress``'s report costs every form it meets."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import adtn
from adtn.graph import TensorGraph
from adtn.layers import TNConv1d, TNConv2d, TNLinear
from adtn.models import lenet5, resnet
from adtn.report import layer_flops


def _low_rank_graph(out: int, rank: int, c: int, k: int) -> TensorGraph:
    """U (out, r) -- V (r, in, kh, kw): the SVD-like network the conv runs as two convs."""
    g = TensorGraph("svd_like")
    g.add_node("u", {"o": out, "r": rank})
    g.add_node("v", {"r": rank, "i": c, "kh": k, "kw": k})
    g.bond("u.r", "v.r")
    g.set_outputs({"out": ["u.o"], "in": ["v.i"], "kh": ["v.kh"], "kw": ["v.kw"]})
    return g.freeze()


def _conv(template: str, **kw) -> TNConv2d:
    return TNConv2d(16, 24, 3, padding=1, template=template, forward="direct", **kw)


CASES = {
    "tucker2": (lambda: _conv("tucker2", rank=4), (2, 16, 8, 8)),
    "cp": (lambda: _conv("cp", rank=5), (2, 16, 8, 8)),
    "kronecker": (lambda: _conv("kronecker", rank=2), (2, 16, 8, 8)),
    "low_rank": (lambda: TNConv2d(16, 24, 3, padding=1, structure=_low_rank_graph(24, 5, 16, 3), forward="direct"),
                 (2, 16, 8, 8)),
    "unfold": (lambda: _conv("tt", rank=3), (2, 16, 8, 8)),
    "dense": (lambda: TNConv2d(16, 24, 3, stride=2, template="tt", rank=3, forward="dense"), (2, 16, 9, 9)),
    "stream": (lambda: TNLinear(64, 48, template="tt", rank=3, forward="direct"), (5, 64)),
    "stream_planner": (lambda: TNLinear(64, 48, template="ht", rank=3, forward="direct"), (3, 2, 64)),
    "dense_linear": (lambda: TNLinear(64, 48, template="tr", rank=2, forward="dense"), (5, 64)),
    "tucker2_1d": (lambda: TNConv1d(16, 24, 3, padding=2, dilation=2, template="tucker2", rank=4,
                                    forward="direct"), (2, 16, 9)),
    "cp_reflect": (lambda: TNConv2d(16, 24, 3, padding=1, padding_mode="reflect", template="cp", rank=5,
                                    forward="direct"), (2, 16, 8, 8)),
}
FORMS = {"tucker2_1d": "tucker2", "cp_reflect": "cp", "stream_planner": "stream", "dense_linear": "dense"}
# the planner's FLOPs are opt_einsum's, which count a step that sums no index as one FLOP per entry
APPROX = {"stream_planner"}


def _counted(layer: nn.Module, x: torch.Tensor) -> int:
    """FLOPs torch counts (matmuls and convs, multiply-adds x 2) in the layer's eval forward."""
    with FlopCounterMode(display=False) as counter:
        layer(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("case", list(CASES))
def test_layer_flops_are_the_ops_forward_runs(case):
    make, shape = CASES[case]
    layer = make().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        layer.dense_weight()  # cached, as the report costs it: a dense forward then rebuilds nothing
        flops, form = layer.flops(shape)
        assert form == FORMS.get(case, case)
        counted = _counted(layer, x)
        assert flops == counted if case not in APPROX else abs(flops - counted) <= 0.05 * counted
        per_sample, label = layer_flops(layer, shape)
    assert label == ("dense" if form == "dense" else f"direct/{form}")
    assert per_sample == flops // shape[0]


def test_flops_count_the_rebuild_when_the_weight_is_not_cached():
    layer = TNConv2d(16, 24, 3, template="tt", rank=3, forward="dense")
    with torch.no_grad():
        cold, _ = layer.flops((2, 16, 8, 8))
        layer.eval()
        layer.dense_weight()
        warm, _ = layer.flops((2, 16, 8, 8))
    assert cold == warm + layer.tn.cost().flops > warm


@pytest.mark.parametrize("case", ["tucker2", "low_rank", "tucker2_1d", "unfold"])
def test_unbatched_flops_are_one_sample(case):
    make, shape = CASES[case]
    layer = make().eval()
    with torch.no_grad():
        assert layer.flops(shape[1:]) == layer.flops((1, *shape[1:]))
        assert layer_flops(layer, shape[1:]) == layer_flops(layer, (1, *shape[1:]))


def test_nominal_flops_without_a_shape():
    """Without an input shape a conv is costed per output position: the 8 x 8 output of the nominal input."""
    make, _ = CASES["low_rank"]
    layer = make().eval()
    per_position, label = layer_flops(layer)
    with torch.no_grad():
        flops, _ = layer.flops((1, 16, 8, 8))
    assert label == "direct/low_rank" and per_position == flops // 64


def _forms(report: adtn.Report) -> set[str]:
    return {row.forward.split("/")[-1] for row in report.rows}


def _check_report(model: nn.Module, report: adtn.Report, x: torch.Tensor) -> None:
    assert report.rows and all(r.flops_after is not None and r.flops_after > 0 for r in report.rows)
    assert report.total_flops_after == sum(r.flops_after for r in report.rows)
    model.eval()
    with torch.no_grad():
        model(x)
    again = adtn.Report.from_model(model, tuple(x.shape))  # the saved model's table costs the same forms
    assert [r.forward for r in again.rows] == [r.forward for r in report.rows]


# every policy and template on lenet5 (no skip=), init="random" to keep it fast: the FLOPs do not
# depend on the values; semi_tucker cannot size lenet5's 1-channel conv1 (a compress limit, not the
# report's; its conv fast form is none, so the report costs it as the other networks); adtn's
# policy fits for seconds
LENET = ["mixed", "tucker2", "hybrid", "auto", *[t for t in adtn.templates.names() if t not in ("semi_tucker", "adtn")]]


@pytest.mark.parametrize("policy", LENET)
def test_compress_report_lenet5(policy):
    x = torch.randn(2, 1, 28, 28)
    model, report = adtn.compress(lenet5(), policy, budget=0.2, init="random", calibration=x)
    _check_report(model, report, x)


def test_compress_report_lenet5_issue_reproduction():
    """The crash of issue 13: mixed, default init (shape search), no skip= and no calibration."""
    model, report = adtn.compress(lenet5(), "mixed", budget=0.1)
    assert all(r.flops_after for r in report.rows)
    assert "low_rank" in _forms(report)  # the form that crashed the report
    _check_report(model, report, torch.randn(2, 1, 28, 28))


# semi_tucker cannot size resnet's 1x1 shortcut convs either (rank 1 is not divisible by t=2)
@pytest.mark.parametrize("policy", ["mixed", "tucker2", "tt", "kronecker", "cp"])
def test_compress_report_resnet(policy):
    x = torch.randn(2, 3, 16, 16)
    model, report = adtn.compress(resnet(20, width=4), policy, budget=0.3, init="random", calibration=x)
    _check_report(model, report, x)
    assert {"tucker2": {"tucker2"}, "kronecker": {"kronecker", "low_rank"}, "cp": {"cp"}}.get(policy, set()) <= \
        _forms(report)

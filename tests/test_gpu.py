"""CUDA: every template's layers, whole-model compression, training and torch.compile on a GPU.

The engine promises that a compiled network runs where its tensors live. These tests build
each layer on the CPU, move it to the GPU and compare outputs and gradients with the CPU
run; they encode layers whose weights already live on the GPU (the decompositions run
there); they compress models on the GPU with calibration data, train a step, save on the GPU
and load on the CPU, and compile with inductor. Without CUDA the whole module skips (CI has
no GPU); the same checks run on the CPU in the rest of the suite.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import adtn
from adtn.models import get_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GPU = "cuda"
TOL = {torch.float32: 2e-3, torch.float64: 1e-10}  # float32: cuDNN convolutions use TF32 by default


def _layers() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(id, dense layer, input shape) per supported layer kind."""
    return [
        ("linear", nn.Linear(64, 48), (5, 64)),
        ("conv2d", nn.Conv2d(16, 24, 3, padding=1), (2, 16, 9, 9)),
        ("conv1d", nn.Conv1d(16, 24, 3, stride=2), (2, 16, 21)),
    ]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.mark.parametrize("forward", ["auto", "direct", "dense"])
@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d"])
@pytest.mark.parametrize("template", adtn.templates.names())
def test_layer_moved_to_gpu_matches_cpu(template: str, kind: str, forward: str) -> None:
    """Same parameters on CPU and GPU, float64: outputs and every gradient agree."""
    torch.manual_seed(0)
    _, dense, shape = next(x for x in _layers() if x[0] == kind)
    dense = dense.double()
    cpu = _quiet(adtn.encode, dense, template, budget=0.5, forward=forward)
    gpu = copy.deepcopy(cpu).to(GPU)
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    x = torch.randn(shape, dtype=torch.float64)
    xg = x.to(GPU).requires_grad_(True)
    x.requires_grad_(True)
    y, yg = cpu(x), gpu(xg)
    assert yg.device.type == "cuda" and yg.shape == y.shape
    assert _rel(yg, y) < TOL[torch.float64]
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (yg * w.to(GPU)).sum().backward()
    assert _rel(xg.grad, x.grad) < TOL[torch.float64]
    for (name, p), pg in zip(cpu.named_parameters(), gpu.parameters()):
        assert pg.grad is not None and pg.grad.device.type == "cuda", name
        assert _rel(pg.grad, p.grad) < 1e-9, name


@pytest.mark.parametrize("template", adtn.templates.names())
def test_encode_on_gpu_weights(template: str) -> None:
    """A layer already on the GPU: the initialiser runs there and the TN layer stays there,
    with the same weight error as the CPU encoding (decompositions are deterministic up to
    rounding; the deep ADTN starts random, so only its device is checked)."""
    torch.manual_seed(0)
    dense = nn.Linear(64, 48)
    cpu = _quiet(adtn.encode, dense, template, budget=0.5)
    gpu = _quiet(adtn.encode, copy.deepcopy(dense).to(GPU), template, budget=0.5)
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    x = torch.randn(7, 64, device=GPU)
    assert gpu(x).device.type == "cuda"
    if template != "adtn":
        y_ref = dense.to(GPU)(x)
        e_gpu, e_cpu = _rel(gpu(x), y_ref), _rel(cpu(x.cpu()), y_ref)
        assert e_gpu < 1.1 * e_cpu + 1e-3, (e_gpu, e_cpu)


POLICIES = ["hybrid", "mixed", "tt", "cp", "kronecker", "auto"]
MODEL_POLICIES = [(m, p) for m in ("fc2", "lenet5", "resnet20", "vgg11") for p in POLICIES
                  if (m, p) != ("vgg11", "auto")]  # auto on vgg11 takes minutes of Gram eigendecompositions


@pytest.mark.parametrize(("model_name", "policy"), MODEL_POLICIES)
def test_compress_model_on_gpu_with_calibration(model_name: str, policy: str) -> None:
    """compress() on a model living on the GPU, calibration batch on the GPU, no skip=: every
    layer on the GPU, outputs close to the float64 CPU run of the same compressed model."""
    torch.manual_seed(0)
    kwargs = {"resnet20": {"width": 4}, "vgg11": {"width": 0.125}}.get(model_name, {})
    model = get_model(model_name, **kwargs).to(GPU).eval()
    shape = {"fc2": (16, 784), "lenet5": (16, 1, 28, 28)}.get(model_name, (16, 3, 32, 32))
    x = torch.randn(shape, device=GPU)
    small, report = _quiet(adtn.compress, model, policy, budget=0.5, calibration=x)
    assert all(p.device.type == "cuda" for p in small.parameters())
    assert all(b.device.type == "cuda" for b in small.buffers())
    y = small(x)
    assert y.device.type == "cuda" and torch.isfinite(y).all()
    y64 = copy.deepcopy(small).double()(x.double())
    assert _rel(y, y64) < TOL[torch.float32]
    cpu = copy.deepcopy(small).cpu().double()
    assert _rel(y64, cpu(x.cpu().double())) < 1e-8
    assert report.rows and str(report)


def test_training_step_and_state_dict_round_trip() -> None:
    """finetune on the GPU lowers the loss; a state_dict saved on the GPU loads on the CPU."""
    torch.manual_seed(0)
    model = get_model("lenet5").to(GPU)
    small, _ = _quiet(adtn.compress, model, "hybrid", budget=0.3)
    x = torch.randn(64, 1, 28, 28, device=GPU)
    y = torch.randint(0, 10, (64,), device=GPU)
    opt = torch.optim.Adam(small.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(small(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu")
    twin, _ = _quiet(adtn.compress, get_model("lenet5"), "hybrid", budget=0.3)
    twin.load_state_dict(state)
    for (name, p), q in zip(small.state_dict().items(), twin.state_dict().values()):
        assert q.device.type == "cpu" and torch.equal(p.cpu(), q), name
    small.eval()
    twin.eval()
    assert _rel(twin.double()(x.cpu().double()), small.double()(x.double())) < 1e-8


def test_deep_adtn_trains_on_gpu() -> None:
    """The deep ADTN (gates, fused and planner executors) runs forward and backward on the GPU."""
    torch.manual_seed(0)
    layer = adtn.encode(nn.Linear(64, 64), "adtn", depth=2).to(GPU)
    x = torch.randn(8, 64, device=GPU)
    loss = layer(x).pow(2).sum()
    loss.backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.device.type == "cuda" and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("template", ["tt", "tucker2", "cp", "kronecker", "adtn"])
def test_torch_compile_inductor_on_gpu(template: str) -> None:
    """torch.compile(fullgraph=True) with inductor (Triton kernels) matches eager on the GPU."""
    torch.manual_seed(0)
    layer = _quiet(adtn.encode, nn.Conv2d(16, 16, 3, padding=1), template, budget=0.5).to(GPU)
    compiled = torch.compile(layer, fullgraph=True)
    for n in (4, 9):
        x = torch.randn(n, 16, 12, 12, device=GPU)
        assert _rel(compiled(x), layer(x)) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype: torch.dtype) -> None:
    """Under autocast the TN layers run in reduced precision and stay close to float32."""
    torch.manual_seed(0)
    for template in ("tt", "ht", "tucker2", "kronecker"):
        layer = _quiet(adtn.encode, nn.Linear(128, 128), template, budget=0.3).to(GPU)
        x = torch.randn(32, 128, device=GPU)
        ref = layer(x)
        with torch.autocast("cuda", dtype=dtype):
            y = layer(x)
        assert torch.isfinite(y).all()
        assert _rel(y.float(), ref) < 5e-2, template

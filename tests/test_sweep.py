"""A randomized sweep of whole-model compression as a new user would run it: no ``skip=``.

Every policy (``adtn.compress.POLICIES`` and every registered template) meets every model of
``adtn.models`` (at small widths) and small models with the layers users bring (bias-free,
depthwise, 1x1, 1-channel and 1-d convs, BatchNorm, multi-head attention), at two budgets.
The full cross product is too slow for CI, so a fixed seed draws the cases such that every
policy, every model and every budget appears. Each case must compress, run forward and
backward, and give a sane report; the same compressed models must give the eager outputs under
``torch.compile(fullgraph=True)``, and a model saved in one process must load in another where
its class is defined only in a script.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import adtn
from adtn.compress import POLICIES
from adtn.layers import TNLayer

BUDGETS = (0.1, 0.5)
POLICY_NAMES = (*POLICIES, *adtn.templates.names())
SEED = 13
PER_POLICY_BUDGET = 2  # models drawn for each (policy, budget)


# ---------------------------------------------------------------------- small models users bring
class BiasFree(nn.Module):
    """Conv and linear layers without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.fc1 = nn.Linear(8 * 6 * 6, 16, bias=False)
        self.fc2 = nn.Linear(16, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


class Depthwise(nn.Module):
    """A depthwise-separable block: a 3x3 depthwise conv (groups = channels), then a pointwise one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.depthwise = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.pointwise = nn.Conv2d(64, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pointwise(torch.relu(self.depthwise(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


class Pointwise(nn.Module):
    """Only 1x1 convs (a bottleneck) before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(16, 64, 1)
        self.reduce = nn.Conv2d(64, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.reduce(torch.relu(self.expand(x)))).mean((2, 3)))


class OneChannel(nn.Module):
    """A conv on 1-channel (grey) images, the in axis of size 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


class WithBatchNorm(nn.Module):
    """BatchNorm after a bias-free conv and after a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.bn1(self.fc1(x.flatten(1)))))


class Attention(nn.Module):
    """A token embedding, one ``nn.MultiheadAttention`` and a classifier on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h.mean(1))


class Conv1dNet(nn.Module):
    """Two 1-d convs over a sequence, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 3, padding=1)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def _reference(name: str, **options) -> Callable[[], nn.Module]:
    return lambda: adtn.models.get_model(name, **options)


# name -> (a fresh model, the input shape of a batch)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "fc2": (_reference("fc2", in_features=64, hidden=32), (4, 1, 8, 8)),
    "lenet5": (_reference("lenet5", image_size=8), (4, 1, 8, 8)),
    "vgg11": (_reference("vgg11", width=0.125, classifier=(128, 128)), (4, 3, 32, 32)),
    "vgg16": (_reference("vgg16", width=0.125, classifier=(128, 128)), (4, 3, 32, 32)),
    "resnet20": (_reference("resnet20", width=4), (4, 3, 8, 8)),
    "resnet32": (_reference("resnet32", width=4), (4, 3, 8, 8)),
    "bias_free": (BiasFree, (4, 3, 8, 8)),
    "depthwise": (Depthwise, (4, 3, 8, 8)),
    "pointwise": (Pointwise, (4, 16, 8, 8)),
    "one_channel": (OneChannel, (4, 1, 8, 8)),
    "batchnorm": (WithBatchNorm, (4, 3, 8, 8)),
    "attention": (Attention, (4, 6, 8)),
    "conv1d": (Conv1dNet, (4, 4, 16)),
}
SLOW_POLICIES = {"auto", "mixed", "adtn", "cp"}  # several candidates per layer, a deep network, or ALS
SLOW_MODELS = {"vgg16", "resnet32"}


@dataclass(frozen=True)
class Case:
    model: str
    policy: str
    budget: float

    @property
    def id(self) -> str:
        return f"{self.model}-{self.policy}-{self.budget:g}"


def draw_cases(seed: int = SEED) -> list[Case]:
    """``PER_POLICY_BUDGET`` models for each (policy, budget), dealt from reshuffled decks of all models
    so that every model comes up about equally often; the slow policies skip the two largest models
    (they take a minute there), which the other policies cover."""
    rng = random.Random(seed)
    deck: list[str] = []
    cases = []
    for policy in POLICY_NAMES:
        for budget in BUDGETS:
            picked: list[str] = []
            while len(picked) < PER_POLICY_BUDGET:
                fits = [n for n in deck if n not in picked and not (policy in SLOW_POLICIES and n in SLOW_MODELS)]
                if not fits:
                    deck = rng.sample(sorted(MODELS), len(MODELS)) + deck  # a fresh deck under the rest
                    continue
                deck.remove(fits[-1])
                picked.append(fits[-1])
            cases += [Case(name, policy, budget) for name in picked]
    return cases


CASES = draw_cases()


def _param(case: Case):
    slow = case.policy in SLOW_POLICIES or case.model in SLOW_MODELS
    return pytest.param(case, id=case.id, marks=[pytest.mark.slow] if slow else [])


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A fresh model (seeded, so every run sees the same weights) and a calibration batch."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    return make(), torch.randn(shape, generator=torch.Generator().manual_seed(1))


def compress_case(case: Case) -> tuple[nn.Module, nn.Module, adtn.Report, torch.Tensor]:
    """(dense original, compressed copy, report, calibration batch) of one case."""
    model, x = build(case.model)
    out, report = adtn.compress(model, case.policy, budget=case.budget, calibration=x)
    return model, out, report, x


def _layer_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}


# ---------------------------------------------------------------------- the sweep
def test_cases_cover_every_policy_model_and_budget():
    assert set(MODELS) >= set(adtn.models.MODELS), "a model of adtn.models is missing from the sweep"
    assert {c.policy for c in CASES} == set(POLICY_NAMES)
    assert {c.model for c in CASES} == set(MODELS)
    assert {(c.policy, c.budget) for c in CASES} == {(p, b) for p in POLICY_NAMES for b in BUDGETS}
    assert len({c.id for c in CASES}) == len(CASES) and draw_cases() == CASES  # distinct and reproducible


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_compress_runs_and_reports(case):
    dense, out, report, x = compress_case(case)
    with torch.no_grad():
        expected = dense(x)
    y = out(x)
    assert y.shape == expected.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    tn_layers = {n: m for n, m in out.named_modules() if isinstance(m, TNLayer)}
    for name, layer in tn_layers.items():
        grads = [p.grad for p in layer.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: no finite gradient"

    assert report.rows, f"{case.id}: nothing was compressed; skipped: {report.skipped}"
    assert {r.name for r in report.rows} == set(tn_layers)
    reported = {r.name for r in report.rows} | {n for n, _ in report.skipped}
    assert _layer_names(dense) <= reported, f"layers neither compressed nor reported: {_layer_names(dense) - reported}"
    for name, module in dense.named_modules():
        if isinstance(module, nn.MultiheadAttention):  # its in-projection is a bare parameter, not a Linear
            assert any(n == name or n.startswith(name + ".") for n in reported - {name + ".out_proj"}), (
                f"{name}: the attention's in_proj_weight is neither compressed nor reported")
    for row in report.rows:
        assert 0 < row.params_after <= row.params_before, f"{row.name}: {row.params_after} > {row.params_before}"
    assert report.total_params_after <= report.total_params_before
    assert report.model_params_after <= report.model_params_before == sum(p.numel() for p in dense.parameters())
    assert report.model_params_after == sum(p.numel() for p in out.parameters())
    assert report.model_error is not None and math.isfinite(report.model_error)
    text = str(report)
    assert all(r.name in text for r in report.rows)
    json.dumps(report.to_dict())
    assert report.to_markdown().count("\n") >= len(report.rows)


# ---------------------------------------------------------------------- torch.compile
def _compile_cases() -> list[Case]:
    """For each policy its first drawn case, preferring models that trace in a second (no vgg / resnet)."""
    heavy = {"vgg11", "vgg16", "resnet20", "resnet32"}
    return [min((c for c in CASES if c.policy == p), key=lambda c: c.model in heavy) for p in POLICY_NAMES]


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in _compile_cases()])
def test_compiled_fullgraph_matches_eager(case):
    _, out, _, x = compress_case(case)
    out.eval()
    torch._dynamo.reset()
    compiled = torch.compile(out, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = out(x)
        got = compiled(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- save here, load elsewhere
NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """Defined only in this script: a 1-channel conv + BatchNorm, a depthwise and a 1x1 conv, two linears."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pointwise = nn.Conv2d(16, 32, 1)
        self.fc1 = nn.Linear(32 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.pointwise(torch.relu(self.depthwise(x))))
        x = nn.functional.max_pool2d(x, 4).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))
'''

SAVE = NET + '''
import json, sys, time, traceback
import adtn

folder, policies, budget = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
torch.save(x, f"{folder}/x.pt")
status = {}
for policy in policies:
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        model, _ = adtn.compress(Net(), policy, budget=budget)  # weight errors: the sweep covers calibration
        model.eval()
        with torch.no_grad():
            torch.save(model(x), f"{folder}/{policy}.out.pt")
        adtn.save(model, f"{folder}/{policy}.pt")
        status[policy] = "saved"
        print(policy, f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    except Exception as err:
        status[policy] = "save failed: " + "".join(traceback.format_exception_only(err)).strip()
print(json.dumps(status))
'''

LOAD = NET + '''
import json, sys, traceback
import adtn

folder, policies = sys.argv[1], sys.argv[2].split(",")
x = torch.load(f"{folder}/x.pt")
status = {}
for policy in policies:
    try:
        model = adtn.load_into(Net(), f"{folder}/{policy}.pt")
        model.eval()
        with torch.no_grad():
            err = (model(x) - torch.load(f"{folder}/{policy}.out.pt")).abs().max().item()
        status[policy] = "ok" if err < 1e-5 else f"outputs differ by {err:.3g}"
    except Exception as err:
        status[policy] = "load failed: " + "".join(traceback.format_exception_only(err)).strip()
print(json.dumps(status))
'''


def _run(script: Path, *args: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False,
                          cwd=script.parent)
    assert done.returncode == 0, f"{script.name} crashed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_saved_model_loads_in_another_process(tmp_path):
    """Process A compresses a script-defined ``Net`` with every policy and saves it; process B, whose
    ``Net`` is its own ``__main__.Net``, rebuilds each on a fresh ``Net()`` and gets the same outputs."""
    policies = ",".join(POLICY_NAMES)
    (tmp_path / "save_net.py").write_text(textwrap.dedent(SAVE))
    (tmp_path / "load_net.py").write_text(textwrap.dedent(LOAD))
    saved = _run(tmp_path / "save_net.py", str(tmp_path), policies, "0.5")
    ready = [p for p, s in saved.items() if s == "saved"]
    loaded = _run(tmp_path / "load_net.py", str(tmp_path), ",".join(ready)) if ready else {}
    results = {p: loaded.get(p, saved[p]) for p in POLICY_NAMES}
    failed = {p: s for p, s in results.items() if s != "ok"}
    assert not failed, "policies that do not survive save / load_into across processes:\n" + "\n".join(
        f"  {p}: {s}" for p, s in failed.items())

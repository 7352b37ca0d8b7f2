import functools
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adtn.errors import AdtnError
from adtn.train import History, distillation_loss, evaluate, finetune, setup_distributed

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}


def blobs(n=256, seed=0):
    """Two Gaussian blobs in 2-D, as a list of (inputs, labels) batches of 32."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.7 + (y[:, None] * 2 - 1) * torch.tensor([1.5, 1.0])
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def mlp(seed=0, hidden=16, classes=2, inputs=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def kl(student, teacher, batches, t=2.0):
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        return float(F.kl_div(F.log_softmax(student(x) / t, 1), F.log_softmax(teacher(x) / t, 1),
                              reduction="batchmean", log_target=True))


def test_finetune_reduces_loss_and_reports_epochs():
    train, val = blobs(), blobs(128, seed=1)
    model = mlp().eval()
    hist = finetune(model, train, val, epochs=4, lr=3e-2, progress=False)
    assert isinstance(hist, History) and len(hist) == 4
    assert all(set(r) == KEYS for r in hist)
    assert hist["epoch"] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["train_acc"] > 0.9 and hist[-1]["val_acc"] > 0.9
    assert all(r["seconds"] > 0 for r in hist)
    assert hist[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine schedule ends at 0
    assert not model.training  # mode restored
    loss, acc = evaluate(model, val)
    assert loss == pytest.approx(hist[-1]["val_loss"]) and acc == pytest.approx(hist[-1]["val_acc"])
    assert hist.best("val_acc")["val_acc"] == max(hist["val_acc"])
    assert hist.best()["val_loss"] == min(hist["val_loss"])
    table = str(hist).splitlines()
    assert table[0].split() == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert len(table) == 5


def test_finetune_options():
    train = blobs()
    model = mlp()
    sgd = functools.partial(torch.optim.SGD, momentum=0.9)
    hist = finetune(model, train, epochs=3, lr=0.05, optimizer=sgd, scheduler=None, grad_clip=1.0,
                    max_steps=10, progress=True)
    assert len(hist) == 2  # 8 batches per epoch: stops after 10 steps, in epoch 2
    assert hist[-1]["val_loss"] is None and hist[-1]["lr"] == 0.05
    assert hist.best()["train_loss"] == min(hist["train_loss"])
    assert "-" in str(hist)


def test_finetune_streams_loaders_without_length():
    train = blobs()
    hist = finetune(mlp(), (b for b in train), epochs=1, lr=1e-2, progress=True)
    assert len(hist) == 1 and hist[0]["train_loss"] > 0


def test_distillation_brings_student_to_teacher():
    train = blobs()
    teacher = mlp(seed=1, hidden=32).train()
    finetune(teacher, train, epochs=3, lr=3e-2, progress=False)
    teacher.train()
    student = mlp(seed=2, hidden=8)
    before = kl(student, teacher, train)
    hist = finetune(student, train, epochs=4, lr=3e-2, teacher=teacher, temperature=2.0, alpha=1.0, progress=False)
    after = kl(student, teacher, train)
    assert after < 0.2 * before
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert teacher.training  # teacher mode restored
    assert all(p.grad is None for p in teacher.parameters())


def test_distillation_loss_mixes_kd_and_ce():
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.randint(0, 3, (5,))
    ce = F.cross_entropy(s, y)
    assert distillation_loss(s, t, y, alpha=0.0) == pytest.approx(float(ce))
    assert distillation_loss(s, s, y, alpha=1.0) == pytest.approx(0.0, abs=1e-6)
    kd = distillation_loss(s, t, y, temperature=3.0, alpha=1.0)
    mixed = distillation_loss(s, t, y, temperature=3.0, alpha=0.25)
    assert mixed == pytest.approx(0.25 * float(kd) + 0.75 * float(ce), rel=1e-6)


def test_setup_distributed_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(AdtnError, match="WORLD_SIZE=2 but RANK"):
        setup_distributed()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).parent / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_matches_single_process(tmp_path):
    worker = load_worker()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for attempt in range(2):  # one retry: a loaded CI machine once aborted a worker (SIGABRT) in the launcher
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(Path(worker.__file__)), str(tmp_path)]
        proc = subprocess.run(cmd, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0 or "SIGABRT" not in proc.stdout + proc.stderr:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, kd in (("ce", False), ("kd", True)):
        model, history = worker.run(10, 0, 1, kd)  # rank 0's init, full batches, one process
        for key, value in model.state_dict().items():
            for r in ranks:
                torch.testing.assert_close(r[name]["params"][key], value, rtol=0, atol=1e-9)
        for r in ranks:
            for got, want in zip(r[name]["history"], history):
                for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
                    assert got[k] == pytest.approx(want[k], rel=1e-9), (name, k)
        assert model.state_dict()["0.weight"].dtype == torch.float64


def test_bad_input():
    train = blobs(64)
    model = mlp()
    with pytest.raises(AdtnError, match="epochs must be an integer >= 1, got 0"):
        finetune(model, train, epochs=0)
    with pytest.raises(AdtnError, match="lr must be > 0, got 0"):
        finetune(model, train, lr=0)
    with pytest.raises(AdtnError, match=r"optimizer 'adagrad' not found; valid: \['adam', 'adamw', 'sgd'\]"):
        finetune(model, train, optimizer="adagrad")
    with pytest.raises(AdtnError, match="temperature must be > 0, got -1"):
        finetune(model, train, teacher=mlp(), temperature=-1)
    with pytest.raises(AdtnError, match=r"alpha .* must be in \[0, 1\], got 1.5"):
        finetune(model, train, alpha=1.5)
    with pytest.raises(AdtnError, match="scheduler 'step' not found"):
        finetune(model, train, scheduler="step")
    with pytest.raises(AdtnError, match="train_loader is empty"):
        finetune(model, [])
    with pytest.raises(AdtnError, match="train_loader is empty"):
        finetune(model, iter([]))
    with pytest.raises(AdtnError, match=r"must yield \(inputs, labels\) pairs, got Tensor"):
        finetune(model, [torch.zeros(4, 2)], progress=False)
    with pytest.raises(AdtnError, match="evaluate: loader is empty"):
        evaluate(model, [])
    with pytest.raises(AdtnError, match="unknown metric 'acc'"):
        History()["acc"]


def test_eval_mode_restores_each_module_even_on_error():
    from adtn.train import eval_mode

    a, b = nn.Linear(2, 2), nn.Linear(2, 2).eval()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(a, b):
        assert not a.training and not b.training
        raise RuntimeError("boom")
    assert a.training and not b.training

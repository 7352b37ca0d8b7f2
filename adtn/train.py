"""Fine-tune or distil a (compressed) model; the same call runs alone or under ``torchrun`` with DDP.

``finetune`` trains a model in place with cross-entropy on labels, or with knowledge
distillation from a teacher (temperature-scaled KL mixed with cross-entropy), and returns a
``History`` of per-epoch metrics. When ``torch.distributed`` is initialised (by ``torchrun``
and ``setup_distributed``, or by the user) the model is wrapped in
``DistributedDataParallel``, metrics are summed over ranks, and only rank 0 draws progress
bars; each rank must feed its own shard of every batch (``DistributedSampler``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import AdtnError

__all__ = ["OPTIMIZERS", "History", "distillation_loss", "eval_mode", "evaluate", "finetune", "setup_distributed"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,  # plain SGD; pass functools.partial(torch.optim.SGD, momentum=0.9) for momentum
}
SCHEDULERS = ("cosine",)

OptimizerSpec = str | Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer
SchedulerSpec = Literal["cosine"] | Callable[[torch.optim.Optimizer], Any] | None

_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


@dataclass
class History:
    """Per-epoch metrics of a ``finetune`` run: ``history[-1]["val_acc"]``, ``history["train_loss"]``.

    Each record holds ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``
    (``None`` without a validation loader), ``lr`` (at the end of the epoch) and ``seconds``.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self):
        return iter(self.epochs)

    def __getitem__(self, key: int | str) -> Any:
        """An epoch's record by position, or one metric over all epochs by name."""
        if isinstance(key, str):
            if key not in _COLUMNS:
                raise AdtnError(f"History: unknown metric {key!r}; valid: {list(_COLUMNS)}")
            return [r[key] for r in self.epochs]
        return self.epochs[key]

    def best(self, metric: str | None = None) -> dict[str, Any]:
        """The record with the best ``metric`` (highest for ``*_acc``, lowest otherwise).

        The default metric is ``val_loss`` when validation ran, else ``train_loss``.
        """
        if metric is None:
            metric = "val_loss" if any(r["val_loss"] is not None for r in self.epochs) else "train_loss"
        rows = [r for r in self[metric] if r is not None]
        if not rows:
            raise AdtnError(f"History.best: no epoch has a value for {metric!r}")
        pick = max if metric.endswith("acc") else min
        return next(r for r in self.epochs if r[metric] == pick(rows))

    def __str__(self) -> str:
        def cell(v: Any) -> str:
            if v is None:
                return "-"
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        rows = [list(_COLUMNS)] + [[cell(r[c]) for c in _COLUMNS] for r in self.epochs]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton's distillation objective: ``alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(q, labels)``.

    ``p_T``/``q_T`` are the teacher's/student's softmax at temperature ``T`` over dim 1; the
    ``T^2`` factor keeps gradient sizes independent of ``T``. KL is averaged over the batch.
    """
    t = temperature
    kd = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                  reduction="batchmean", log_target=True) * (t * t)
    if alpha >= 1.0:
        return kd
    return alpha * kd + (1.0 - alpha) * F.cross_entropy(student, labels)


def setup_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in its environment; return ``(rank, world_size)``.

    Does nothing (and returns ``(0, 1)``) when ``WORLD_SIZE`` is unset or 1, and returns the
    current group's values when one is already initialised. The backend defaults to ``nccl``
    when CUDA is available (binding this process to ``cuda:LOCAL_RANK``) and ``gloo`` otherwise.
    """
    if _distributed():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise AdtnError(f"setup_distributed: WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun")
    if not dist.is_available():
        raise AdtnError("setup_distributed: this torch build has no torch.distributed support")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run the block with ``modules`` in eval mode, then give each its own mode back (even on error)."""
    was = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, was):
            m.train(mode)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``'s ``(inputs, labels)`` batches.

    Runs in eval mode under ``no_grad`` and restores the model's mode. When
    ``torch.distributed`` is initialised the sums are reduced over ranks, so every rank must
    call it (each on its shard) and all get the global values.
    """
    device = _resolve_device(model, device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with eval_mode(model):
        for batch in loader:
            x, y = _unpack(batch, device, "evaluate")
            out = model(x)
            _accumulate(sums, F.cross_entropy(out, y), out, y)
    loss, acc, n = _reduce(sums)
    if n == 0:
        raise AdtnError("evaluate: loader is empty; it must yield at least one (inputs, labels) batch")
    return loss, acc


def finetune(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: OptimizerSpec = "adam",
    weight_decay: float = 0.0,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    scheduler: SchedulerSpec = "cosine",
    grad_clip: float | None = None,
) -> History:
    """Train ``model`` in place on ``(inputs, labels)`` batches; distil from ``teacher`` when given.

    Args:
        model: the model to train (a plain module, or one already wrapped in DDP).
        train_loader: iterable of ``(inputs, labels)``; under DDP, this rank's shard.
        val_loader: evaluated with ``evaluate`` after every epoch when given.
        epochs: passes over ``train_loader``.
        lr: learning rate (peak of the cosine schedule).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (no momentum), a factory called as
            ``factory(params, lr=lr, weight_decay=weight_decay)`` (``torch.optim.AdamW``,
            a ``functools.partial``), or a ready optimizer (then ``lr``/``weight_decay`` are its own).
        weight_decay: passed to the optimizer.
        teacher: when given, the loss is ``distillation_loss``; the teacher is moved to
            ``device`` and run in eval mode without gradients.
        temperature: distillation temperature ``T``.
        alpha: weight of the distillation term; ``1 - alpha`` weighs cross-entropy on labels.
        device: where to train; default: the device of the model's parameters.
        progress: tqdm bars, one per epoch (rank 0 only).
        max_steps: stop after this many optimizer steps in all.
        scheduler: ``"cosine"`` (per step, to 0 at the last step), ``None``, or a factory
            ``factory(optimizer) -> scheduler`` stepped after every optimizer step.
        grad_clip: clip the gradients' global norm to this value.

    Returns:
        ``History`` with one record per epoch; losses and accuracies are averaged over all
        samples of all ranks.

    Under DDP, gradients are averaged over ranks, so equal per-rank batches of size ``b``
    train exactly like one process with batches of size ``world_size * b``.
    """
    _check_args(epochs, lr, temperature, alpha, weight_decay, max_steps, grad_clip)
    net = model
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    device = _resolve_device(model, device)
    model.to(device)
    steps_per_epoch = _length(train_loader)
    if steps_per_epoch == 0:
        raise AdtnError("finetune: train_loader is empty; it must yield at least one (inputs, labels) batch")
    if _distributed() and dist.get_world_size() > 1:
        if steps_per_epoch is not None:
            _check_equal_lengths(steps_per_epoch, device)
        if net is model:
            ids = [device] if device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    opt = _make_optimizer(optimizer, model, lr, weight_decay)
    total = min(max_steps or math.inf, epochs * steps_per_epoch if steps_per_epoch else math.inf)
    sched, per_epoch = _make_scheduler(scheduler, opt, total, epochs)
    teacher_mode = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(device).eval()
    was_training = model.training
    show = progress and _rank() == 0
    history, step = History(), 0
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            sums = torch.zeros(4, dtype=torch.float64, device=device)
            bar = _bar(show, steps_per_epoch, f"epoch {epoch}/{epochs}")
            for batch in train_loader:
                x, y = _unpack(batch, device, "finetune")
                out = net(x)
                if teacher is None:
                    loss = F.cross_entropy(out, y)
                else:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = distillation_loss(out, target, y, temperature, alpha)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                if sched is not None and not per_epoch:
                    sched.step()
                step += 1
                _accumulate(sums, loss.detach(), out.detach(), y)
                bar.update(1)
                if show and (step % 10 == 0 or bar.n == steps_per_epoch):
                    bar.set_postfix(loss=f"{sums[0].item() / sums[1].item():.4f}")
                if max_steps is not None and step >= max_steps:
                    break
            train_loss, train_acc, n = _reduce(sums)
            if n == 0:
                raise AdtnError("finetune: train_loader is empty; it must yield at least one (inputs, labels) batch")
            if sched is not None and per_epoch:
                sched.step()
            val_loss, val_acc = evaluate(model, val_loader, device) if val_loader is not None else (None, None)
            record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                      "val_acc": val_acc, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
            history.epochs.append(record)
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.endswith(("loss", "acc")) and v is not None})
            bar.close()
            if max_steps is not None and step >= max_steps:
                break
    finally:
        opt.zero_grad(set_to_none=True)  # free the gradients' memory
        model.train(was_training)
        if teacher is not None:
            teacher.train(teacher_mode)
    return history


# --- helpers ----------------------------------------------------------------------------


def _check_args(epochs, lr, temperature, alpha, weight_decay, max_steps, grad_clip) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise AdtnError(f"finetune: epochs must be an integer >= 1, got {epochs!r}")
    if not lr > 0:
        raise AdtnError(f"finetune: lr must be > 0, got {lr!r}")
    if not temperature > 0:
        raise AdtnError(f"finetune: temperature must be > 0, got {temperature!r}")
    if not 0.0 <= alpha <= 1.0:
        raise AdtnError(f"finetune: alpha (weight of the distillation term) must be in [0, 1], got {alpha!r}")
    if not weight_decay >= 0:
        raise AdtnError(f"finetune: weight_decay must be >= 0, got {weight_decay!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise AdtnError(f"finetune: max_steps must be None or an integer >= 1, got {max_steps!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise AdtnError(f"finetune: grad_clip must be None or > 0, got {grad_clip!r}")


def _make_optimizer(spec: OptimizerSpec, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if isinstance(spec, str):
        if spec.lower() not in OPTIMIZERS:
            raise AdtnError(f"finetune: optimizer {spec!r} not found; valid: {sorted(OPTIMIZERS)} or a factory")
        spec = OPTIMIZERS[spec.lower()]
    if not callable(spec):
        raise AdtnError(f"finetune: optimizer must be a name, a factory or an Optimizer, got {type(spec).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AdtnError("finetune: the model has no parameters that require grad")
    return spec(params, lr=lr, weight_decay=weight_decay)


def _make_scheduler(spec: SchedulerSpec, opt: torch.optim.Optimizer, total: float, epochs: int):
    """The scheduler and whether it steps per epoch (cosine when the loader has no length)."""
    if spec is None:
        return None, False
    if isinstance(spec, str):
        if spec != "cosine":
            raise AdtnError(f"finetune: scheduler {spec!r} not found; valid: {list(SCHEDULERS)}, None or a factory")
        if math.isinf(total):
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), True
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total)), False
    return spec(opt), False


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _unpack(batch: Any, device: torch.device, where: str) -> tuple[Any, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise AdtnError(f"{where}: loaders must yield (inputs, labels) pairs, got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    nb = device.type == "cuda"
    x = x.to(device, non_blocking=nb) if isinstance(x, torch.Tensor) else x
    return x, y.to(device, non_blocking=nb)


def _accumulate(sums: torch.Tensor, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
    """Add (loss * samples, samples, correct, labels) of a batch to ``sums`` without syncing."""
    if y.is_floating_point() and y.shape == out.shape:  # soft labels
        y = y.argmax(1)
    n = out.shape[0]
    sums[0] += loss.to(torch.float64) * n
    sums[1] += n
    sums[2] += (out.argmax(1) == y).sum()
    sums[3] += y.numel()


def _reduce(sums: torch.Tensor) -> tuple[float, float, int]:
    """Mean loss, accuracy and sample count, summed over ranks when distributed."""
    if _distributed():
        dist.all_reduce(sums)
    loss_sum, n, correct, labels = sums.tolist()
    return (loss_sum / n, correct / labels, int(n)) if n else (math.nan, math.nan, 0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_equal_lengths(n: int, device: torch.device) -> None:
    """Every rank must take the same number of steps, or DDP's gradient all-reduce hangs."""
    t = torch.tensor([n, -n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0].item() != -t[1].item():
        raise AdtnError(f"finetune: under DDP every rank's train_loader must have the same number of batches, got "
                        f"{-t[1].item()} to {t[0].item()} (use DistributedSampler, which pads shards to equal length)")


class _NoBar:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(show: bool, total: int | None, desc: str):
    if not show:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True)

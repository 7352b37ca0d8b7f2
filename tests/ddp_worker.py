"""One rank of the DDP equivalence test in tests/test_train.py; launched by ``torchrun``.

Each rank trains on its half of every global batch (float64, plain SGD) and saves its final
parameters and metrics to ``OUT/rank{RANK}.pt``. The test feeds the full batches to a single
process and compares. ``make_problem``/``make_model`` are shared with the test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

GLOBAL_BATCH = 8
STEPS_PER_EPOCH = 5
EPOCHS = 2
LR = 0.2


def make_problem() -> tuple[list, list]:
    """Global train and validation batches of a 3-class problem in float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((STEPS_PER_EPOCH + 2) * GLOBAL_BATCH, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    batches = [(x[i : i + GLOBAL_BATCH], y[i : i + GLOBAL_BATCH]) for i in range(0, len(x), GLOBAL_BATCH)]
    return batches[:STEPS_PER_EPOCH], batches[STEPS_PER_EPOCH:]


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def shard(batches: list, rank: int, world: int) -> list:
    """This rank's contiguous slice of every global batch."""
    return [(x.chunk(world)[rank], y.chunk(world)[rank]) for x, y in batches]


def run(student_seed: int, rank: int, world: int, kd: bool) -> tuple[nn.Module, list]:
    from adtn.train import finetune

    train, val = make_problem()
    model = make_model(student_seed)
    teacher = make_model(123) if kd else None
    hist = finetune(model, shard(train, rank, world), shard(val, rank, world), epochs=EPOCHS, lr=LR,
                    optimizer="sgd", scheduler=None, teacher=teacher, temperature=2.0, alpha=0.5, progress=False)
    return model, hist.epochs


def main() -> None:
    from adtn.train import setup_distributed

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank, world = setup_distributed()
    result = {}
    for name, kd in (("ce", False), ("kd", True)):
        # rank-dependent init: DDP must broadcast rank 0's parameters before training
        model, history = run(10 + rank, rank, world, kd)
        result[name] = {"params": model.state_dict(), "history": history}
    torch.save(result, args.out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

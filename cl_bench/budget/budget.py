"""The compute budget of one task: which batches to train on and when to stop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cl_bench.budget.flops import FlopCounter
from cl_bench.schemas import schema


class Budget:
    """Yields index batches over a task's training set and stops at the first of
    `epochs`, `iters` or `flops_per_task` (training FLOPs spent on this task)."""

    def __init__(
        self,
        batch_size: int = 10,
        epochs: int | None = 1,
        iters: int | None = None,
        flops_per_task: float | None = None,
        drop_last: bool = False,
    ):
        if epochs is None and iters is None:
            raise ValueError("set budget.epochs or budget.iters (per task); both are null")
        for key, value in (("batch_size", batch_size), ("epochs", epochs), ("iters", iters),
                           ("flops_per_task", flops_per_task)):
            if value is not None and value <= 0:
                raise ValueError(f"budget.{key} must be positive (or null), got {value}")
        self.batch_size = batch_size
        self.epochs = epochs
        self.iters = iters
        self.flops_per_task = flops_per_task
        self.drop_last = drop_last
        self.counter = FlopCounter()

    def steps_per_task(self, n_samples: int) -> int:
        """Iterations the task will take unless the FLOP cap stops it first."""
        per_epoch = n_samples // self.batch_size
        if not self.drop_last and n_samples % self.batch_size:
            per_epoch += 1
        limits = [lim for lim in (self.iters,) if lim is not None]
        if self.epochs is not None:
            limits.append(self.epochs * per_epoch)
        return min(limits)

    def batches(
        self, n_samples: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> Iterator[torch.Tensor]:
        total = self.steps_per_task(n_samples)
        start_flops = self.counter.train_flops
        step = 0
        while step < total:
            order = torch.randperm(n_samples, generator=generator).to(device)
            for begin in range(0, n_samples, self.batch_size):
                idx = order[begin : begin + self.batch_size]
                if self.drop_last and len(idx) < self.batch_size:
                    break
                if step >= total:
                    return
                if (
                    self.flops_per_task is not None
                    and self.counter.train_flops - start_flops >= self.flops_per_task
                ):
                    return
                yield idx
                step += 1


@schema("budget", "budget")
@dataclass
class BudgetConf:
    _target_: str = "cl_bench.budget.budget.Budget"
    batch_size: int = 10
    epochs: int | None = 1
    iters: int | None = None
    flops_per_task: float | None = None
    drop_last: bool = False

"""The compute budget of one task: which batches to train on and when to stop."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
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
        self,
        n_samples: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        active: Callable[[int], torch.Tensor | None] | None = None,
        version: Callable[[], int] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Index batches of the task's `n_samples` training samples. `active(n)` (e.g.
        `Method.active_samples`) is a bool mask of the samples still in training, or None
        for all: each epoch is one pass over the active samples in a random order, so
        removing samples under an epoch budget shortens the task; `iters` and the FLOP cap
        still stop it. When `version()` changes between two batches the active set is asked
        again and the rest of the epoch's order keeps only its active samples. Without
        `active` (or while it answers None) the batches and random draws are those of a
        plain per-epoch permutation."""
        if self.steps_per_task(n_samples) == 0:
            return
        limit = self.iters if self.iters is not None else math.inf
        start_flops = self.counter.train_flops
        step = epoch = 0
        while step < limit and (self.epochs is None or epoch < self.epochs):
            mask = active(n_samples) if active is not None else None
            if mask is None:
                order = torch.randperm(n_samples, generator=generator).to(device)
            else:
                kept = mask.nonzero().squeeze(1)
                order = kept[torch.randperm(len(kept), generator=generator).to(kept.device)]
                order = order.to(device)
            seen = version() if version is not None else 0
            begin = yielded = 0
            while begin < len(order):
                if active is not None and version is not None and version() != seen:
                    seen = version()
                    order = order[begin:]
                    mask = active(n_samples)
                    if mask is not None:
                        order = order[mask.to(order.device)[order]]
                    begin = 0
                    if not len(order):
                        break
                idx = order[begin : begin + self.batch_size]
                if self.drop_last and len(idx) < self.batch_size:
                    break
                if step >= limit:
                    return
                if (
                    self.flops_per_task is not None
                    and self.counter.train_flops - start_flops >= self.flops_per_task
                ):
                    return
                yield idx
                step += 1
                yielded += 1
                begin += self.batch_size
            if not yielded:  # nothing left to train on (or only a dropped last batch)
                return
            epoch += 1


@schema("budget", "budget")
@dataclass
class BudgetConf:
    _target_: str = "cl_bench.budget.budget.Budget"
    batch_size: int = 10
    epochs: int | None = 1
    iters: int | None = None
    flops_per_task: float | None = None
    drop_last: bool = False

"""The compute budget of one task: which batches to train on and when to stop."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cl_bench.budget.flops import FlopCounter
from cl_bench.errors import ConfigError
from cl_bench.schemas import defaults_from, schema

log = logging.getLogger("cl_bench")

# budget.match_flops -> (train.csv column of the reference, FlopCounter attribute)
MATCH_FLOPS = {"theoretical": ("flops_cumulative", "train_flops"),
               "executed": ("flops_dense_cumulative", "train_flops_dense")}


def reference_flops(run_dir: str | Path, match_flops: str = "theoretical") -> list[int]:
    """The cumulative training FLOPs of the completed run in `run_dir` at the end of each of
    its tasks (train.csv's last row of the task; a task without rows trained no step)."""
    run_dir = Path(run_dir).expanduser()
    column = MATCH_FLOPS[match_flops][0]
    where = f"budget.match={run_dir}"
    if not run_dir.is_dir():
        raise ConfigError(f"{where}: no such directory; give the directory of a completed "
                          "clbench run")
    summary, train = run_dir / "summary.json", run_dir / "train.csv"
    if not summary.is_file() or not train.is_file():
        missing = "summary.json" if not summary.is_file() else "train.csv"
        raise ConfigError(f"{where}: has no {missing}, so it is not a clbench run directory; "
                          "give the directory of a completed run")
    info = json.loads(summary.read_text())
    status = info.get("status")
    acc = run_dir / "acc_matrix.csv"
    if status != "completed" or not acc.is_file():
        raise ConfigError(f"{where}: the reference run is not completed (status {status}); "
                          "finish it (skip_done=true resumes it) or match another run")
    with open(acc, newline="") as f:
        n_tasks = 1 + max((int(row["train_task"]) for row in csv.DictReader(f)), default=-1)
    ends: dict[int, int] = {}
    with open(train, newline="") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise ConfigError(f"{where}: its train.csv has no {column} column (a run older "
                              "than the dense count); use budget.match_flops=theoretical")
        last_step = 0
        for row in reader:
            if None in row.values():  # a half row: the file stops there
                break
            ends[int(row["train_task"])] = int(float(row[column]))
            last_step = int(row["step"])
    steps = info.get("steps")
    if steps is not None and last_step != steps:
        raise ConfigError(f"{where}: its train.csv ends at step {last_step} where its "
                          f"summary.json reports {steps} steps, so the file is truncated or "
                          "from another run; match a complete run (rerun the reference)")
    cumulative, last = [], 0
    for task in range(n_tasks):
        last = ends.get(task, last)
        cumulative.append(last)
    return cumulative


@schema("budget", "budget")
@dataclass
class BudgetConf:
    _target_: str = "cl_bench.budget.budget.Budget"
    batch_size: int = 10
    epochs: int | None = 1
    iters: int | None = None
    flops_per_task: float | None = None
    drop_last: bool = False
    match: str | None = None  # a completed run's directory: train to its FLOPs per task
    match_flops: str = "theoretical"  # theoretical (train_flops) | executed (train_flops_dense)


@defaults_from(BudgetConf)
class Budget:
    """Yields index batches over a task's training set and stops at the first of
    `epochs`, `iters` or `flops_per_task` (training FLOPs spent on this task).

    With `match` (a completed run's directory) those limits give way to the reference's
    training FLOPs per task (`match_flops`: theoretical `train_flops` or executed
    `train_flops_dense`): epochs are drawn until this run's cumulative count reaches the
    reference's at the end of the same task, so each task's share and the total end
    within one step's FLOPs of the reference's."""

    def __init__(
        self,
        batch_size: int,
        epochs: int | None,
        iters: int | None,
        flops_per_task: float | None,
        drop_last: bool,
        match: str | None,
        match_flops: str,
    ):
        if match_flops not in MATCH_FLOPS:
            raise ConfigError(f"budget.match_flops must be theoretical or executed, got "
                              f"{match_flops!r}")
        if match is not None and flops_per_task is not None:
            raise ConfigError("budget.match and budget.flops_per_task both cap the task's "
                              "FLOPs; set budget.flops_per_task=null to match the reference")
        if epochs is None and iters is None and match is None:
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
        self.match = match
        self.match_flops = match_flops
        # the reference's cumulative training FLOPs at the end of each task
        self.targets = reference_flops(match, match_flops) if match is not None else None
        self.counter = FlopCounter()

    def check_tasks(self, n_tasks: int) -> None:
        """Fails when the matched reference has fewer than `n_tasks` tasks; logs the
        per-task targets."""
        if self.targets is None:
            return
        if len(self.targets) != n_tasks:
            raise ConfigError(f"budget.match={self.match}: the reference run has "
                              f"{len(self.targets)} tasks and this run {n_tasks}; match a "
                              "run of the same stream")
        ends = self.targets[:n_tasks]
        shares = [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        log.info("budget.match=%s (%s FLOPs): per-task targets %s", self.match,
                 self.match_flops, " ".join(f"{s:.4g}" for s in shares))

    def spent(self) -> int:
        """Training FLOPs so far, in the count `match_flops` names."""
        return getattr(self.counter, MATCH_FLOPS[self.match_flops][1])

    def steps_per_task(self, n_samples: int) -> int | None:
        """Iterations the task will take unless the FLOP cap stops it first (None when
        matching a reference: the FLOPs decide)."""
        if self.targets is not None:
            return None
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
        task: int = 0,
        active: Callable[[int], torch.Tensor | None] | None = None,
        version: Callable[[], int] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Index batches of the `n_samples` training samples of task number `task` (its
        place in the stream). `active(n)` (e.g. `Method.active_samples`) is a bool mask of
        the samples still in training, or None for all: each epoch is one pass over the
        active samples in a random order, so removing samples under an epoch budget
        shortens the task; `iters`, the FLOP cap or the matched FLOPs still stop it. When
        `version()` changes between two batches the active set is asked again and the rest
        of the epoch's order keeps only its active samples. Without `active` (or while it
        answers None) the batches and random draws are those of a plain per-epoch
        permutation."""
        if self.steps_per_task(n_samples) == 0:
            return
        matching = self.targets is not None
        if matching:
            target = self.targets[task]
            limit, epochs = math.inf, None
        else:
            limit = self.iters if self.iters is not None else math.inf
            epochs, start = self.epochs, self.counter.train_flops
        step = epoch = 0
        while step < limit and (epochs is None or epoch < epochs):
            before, yielded = self.spent(), 0
            for idx in self._epoch(n_samples, generator, device, active, version):
                if step >= limit:
                    return
                if matching and self.spent() >= target:
                    return
                if (not matching and self.flops_per_task is not None
                        and self.counter.train_flops - start >= self.flops_per_task):
                    return
                yield idx
                step += 1
                yielded += 1
            if not yielded:  # nothing left to train on (or only a dropped last batch)
                return
            if matching and self.spent() == before:  # would loop forever
                raise ConfigError(
                    f"budget.match={self.match}: an epoch of task {task} spent no training "
                    "FLOPs, so the reference's cannot be reached by steps (the method trains "
                    "outside its steps, or budget.drop_last drops every batch); drop "
                    "budget.match for this run")
            epoch += 1

    def _epoch(self, n_samples, generator, device, active, version) -> Iterator[torch.Tensor]:
        """One pass over the active samples in a random order (see `batches`)."""
        mask = active(n_samples) if active is not None else None
        if mask is None:
            order = torch.randperm(n_samples, generator=generator).to(device)
        else:
            kept = mask.nonzero().squeeze(1)
            order = kept[torch.randperm(len(kept), generator=generator).to(kept.device)]
            order = order.to(device)
        seen = version() if version is not None else 0
        begin = 0
        while begin < len(order):
            if active is not None and version is not None and version() != seen:
                seen = version()
                order = order[begin:]
                mask = active(n_samples)
                if mask is not None:
                    order = order[mask.to(order.device)[order]]
                begin = 0
                if not len(order):
                    return
            idx = order[begin : begin + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            yield idx
            begin += self.batch_size

"""Accuracy of every task (after each task) and of probe subsets (during training)."""

from __future__ import annotations

import contextlib

import torch

from cl_bench.budget.flops import FlopCounter
from cl_bench.data.stream import TaskStream
from cl_bench.data.transforms import Preprocess

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (so bf16 is the fast path)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower
        return any(getattr(torch.cpu, f"_is_{isa}_supported", lambda: False)()
                   for isa in ("avx512_bf16", "amx_tile"))
    return False


def resolve_precision(precision: str, device) -> str:
    """`auto` -> `bf16` where the device has native bfloat16 matmuls, else `fp32`."""
    if precision not in PRECISIONS:
        raise ValueError(f"eval.precision={precision!r}: choose one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    return precision


class Evaluator:
    """Scores a method on the stream's test sets in one batched pass per call.

    Each call returns {scenario: tensor of per-task accuracies}. For split streams the
    same logits give class-IL (argmax over all classes) and task-IL (argmax over the
    task's own classes); for domain-IL streams, plain argmax.
    The continual-evaluation probe is a fixed random subset of `probe_size` test samples
    per task, kept on the device already normalised. With `precision="bf16"` the probe
    passes run under bfloat16 autocast (2-3x faster on CPUs with AMX and on recent GPUs; a
    few near-tie predictions may flip); `"auto"` picks bf16 where the device computes it
    natively. The test-set passes always run in float32.
    """

    def __init__(
        self,
        stream: TaskStream,
        preprocess: Preprocess,
        class_mask: torch.Tensor,
        counter: FlopCounter,
        device,
        probe_size: int = 200,
        batch_size: int = 1000,
        seed: int = 0,
        precision: str = "auto",
    ):
        for key, value, least in (("probe_size", probe_size, 1), ("batch_size", batch_size, 1)):
            if value < least:
                raise ValueError(f"eval.{key} must be >= {least}, got {value}")
        device = torch.device(device)
        self.precision = resolve_precision(precision, device)
        self.probe_autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if self.precision == "bf16" else contextlib.nullcontext
        )
        self.scenarios = stream.scenarios
        self.preprocess = preprocess
        self.class_mask = class_mask
        self.counter = counter
        self.batch_size = batch_size
        self.n_tasks = len(stream)
        gen = torch.Generator().manual_seed(seed)

        def gather(parts):
            return tuple(torch.cat(p).to(device) for p in zip(*parts, strict=False))

        self.test = gather(
            (t.test_x, t.test_y, torch.full_like(t.test_y, t.id)) for t in stream
        )
        probes = []
        for t in stream:
            idx = torch.randperm(len(t.test_y), generator=gen)[:probe_size]
            probes.append((t.test_x[idx], t.test_y[idx], torch.full_like(idx, t.id)))
        x, y, t = gather(probes)
        # probes are scored every `eval.every` steps: normalise them once, keep them as floats
        self.probe = (preprocess(x), y, t)
        self.probe_ends = torch.cumsum(
            torch.tensor([min(probe_size, len(t.test_y)) for t in stream]), 0
        ).tolist()

    def full(self, predict, task_aware: bool = False, reveal=None) -> dict[str, torch.Tensor]:
        """Accuracy on the whole test set of every task of the stream. `task_aware`:
        `predict(x, task_ids)` is called for task-IL (a second pass) and `predict(x)` for
        the others."""
        return self._score(predict, *self.test, n_tasks=self.n_tasks, task_aware=task_aware,
                           reveal=reveal)

    def probes(self, predict, n_seen: int, task_aware: bool = False,
               reveal=None) -> dict[str, torch.Tensor]:
        """Accuracy on the probes of the first `n_seen` tasks."""
        end = self.probe_ends[n_seen - 1]
        x, y, t = (p[:end] for p in self.probe)
        with self.probe_autocast():
            return self._score(predict, x, y, t, n_tasks=n_seen, ready=True,
                               task_aware=task_aware, reveal=reveal)

    def task_accuracy(self, predict, x, y, task_id: int, task_aware: bool = False,
                      reveal=None) -> dict[str, float]:
        """Accuracy, per scenario, of samples `x`, `y` of task `task_id` from outside the
        test set (its validation split)."""
        t = torch.full_like(y, task_id)
        scores = self._score(predict, x, y, t, n_tasks=task_id + 1, task_aware=task_aware,
                             reveal=reveal)
        return {s: float(acc[task_id]) for s, acc in scores.items()}

    @torch.inference_mode()
    def _score(self, predict, x, y, task_ids, n_tasks, ready=False,
               task_aware=False, reveal=None) -> dict[str, torch.Tensor]:
        """`ready`: x is already preprocessed. `reveal(task_ids)` (`Method.reveal_task_ids`)
        gets each batch's true task ids after `predict(x)` scored it, to score a task
        inference (SupSup's task_infer_acc); they never enter a prediction."""
        correct = {s: torch.zeros(n_tasks, device=y.device) for s in self.scenarios}
        with self.counter.evaluating():
            for b in range(0, len(y), self.batch_size):
                sl = slice(b, b + self.batch_size)
                xb = x[sl] if ready else self.preprocess(x[sl])
                yb, tb = y[sl], task_ids[sl]
                logits = predict(xb)
                if reveal is not None:
                    reveal(tb)
                for scenario in self.scenarios:
                    scored = logits
                    if scenario == "task_il":
                        if task_aware:
                            scored = predict(xb, tb)
                        scored = scored.masked_fill(~self.class_mask[tb], float("-inf"))
                    hit = (scored.argmax(1) == yb).float()
                    correct[scenario] += torch.bincount(tb, hit, minlength=n_tasks)
        totals = torch.bincount(task_ids, minlength=n_tasks).clamp(min=1).float()
        return {s: c / totals for s, c in correct.items()}

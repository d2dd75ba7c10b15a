"""Per-sample forgetting events (Toneva et al., ICLR 2019), the easiness score of data
removal and data sieving."""

from __future__ import annotations

import warnings

import torch

from cl_bench.data.batch import Batch

NEVER_CORRECT = torch.iinfo(torch.int64).max


def correctly_classified(method, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """Whether the argmax of `logits` over the seen classes (in task-IL over the sample's
    own task's classes) is the label."""
    if method.scenario == "task_il":
        allowed = method.class_mask[batch.task]
    else:
        allowed = method.seen_mask
    return logits.masked_fill(~allowed, float("-inf")).argmax(1) == batch.y


class ForgettingEvents:
    """Forgetting events of Toneva et al. (ICLR 2019) per training sample of a task: the
    times a sample classified correctly at one presentation is misclassified at its next,
    counted since the last `reset`. Kept on the device; recording never syncs the host."""

    def __init__(self, n: int, device: torch.device | str):
        self.last = torch.zeros(n, dtype=torch.bool, device=device)  # correct when last seen
        self.ever = torch.zeros_like(self.last)
        self.events = torch.zeros(n, dtype=torch.int64, device=device)
        self.warned = False

    def record(self, method, batch: Batch) -> None:
        """Scores the step's training batch from its logits (`method.batch_logits`, which
        a method providing `step_logits` always gives); a batch without `sample`
        positions (one not drawn by the budget) is skipped, once with a warning."""
        logits = method.batch_logits(batch)
        if logits is None:
            raise RuntimeError(f"method={method.name} declares step_logits but its step gave "
                               "no logits of the training batch: its first forward of a "
                               "step must be self.forward (or self.ctx.record_logits)")
        if batch.sample is None:
            if not self.warned:
                warnings.warn("a training batch without sample positions: its forgetting "
                              "events are not recorded", stacklevel=2)
                self.warned = True
            return
        correct = correctly_classified(method, batch, logits)
        s = batch.sample  # distinct positions: one epoch's permutation
        self.events[s] += self.last[s] & ~correct
        self.last[s] = correct
        self.ever[s] |= correct

    def counts(self) -> torch.Tensor:
        """Forgetting events per sample; never-correct samples get the maximum count."""
        return torch.where(self.ever, self.events, NEVER_CORRECT)

    def easiest(self, candidates: torch.Tensor, k: int) -> torch.Tensor:
        """The `k` of `candidates` (ascending positions) with the fewest forgetting events,
        ties to the lower position."""
        order = torch.sort(self.counts()[candidates], stable=True).indices
        return candidates[order[:k]]

    def reset(self) -> None:
        self.last.zero_()
        self.ever.zero_()
        self.events.zero_()


def fraction(value: float, key: str) -> float:
    """`value` checked to lie in (0, 1]; else ValueError naming the config `key`."""
    if not 0 < value <= 1:
        raise ValueError(f"{key}={value} must be a fraction in (0, 1]")
    return value


def at_step(frac: float, task_steps: int | None) -> int:
    """The step (from 1) at `frac` of the task's planned steps."""
    if task_steps is None:
        raise ValueError("this plugin schedules by fractions of a task's planned steps, and "
                         "under budget.match a task has no planned number of steps; use "
                         "budget.epochs or budget.iters")
    return max(1, round(frac * task_steps))

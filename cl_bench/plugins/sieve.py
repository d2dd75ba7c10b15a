"""SpFDE's circular data sieving."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.plugins.forgetting import ForgettingEvents, at_step, fraction
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "sieve")
@dataclass
class SieveConf(PluginConf):
    _target_: str = "cl_bench.plugins.sieve.Sieve"
    keep_frac: float = 0.8  # of each task's samples active at any time
    interval: float = 0.1  # of the task's planned steps between swaps
    swap_frac: float = 0.1  # of the active set swapped out (and in) at each swap


@defaults_from(SieveConf)
class Sieve(Plugin):
    """Circular data sieving of SpFDE (Yuan, Li et al., NeurIPS 2022): only round(keep_frac
    * n) of a task's n samples are active, at first a random choice (torch's global RNG);
    every `interval` (fraction of the task's planned steps) the round(swap_frac * active)
    active samples with the fewest forgetting events in that interval (never correctly
    classified ones count as the most; ties to the lower position) go to the tail of the
    queue of removed samples and as many come back from its head. Once every initially
    removed sample has been back, the queue is shuffled after each swap, as in the paper.
    Every task starts afresh."""

    needs = frozenset({"step_logits", "planned_steps"})
    # the batches drawn depend on the samples removed along the task, which a resumed
    # iterator cannot redraw: a run resumes from the task's start
    resumes_in_task = False

    def __init__(self, keep_frac: float, interval: float, swap_frac: float):
        self.keep_frac = fraction(keep_frac, "plugins.sieve.keep_frac")
        self.interval = fraction(interval, "plugins.sieve.interval")
        self.swap_frac = fraction(swap_frac, "plugins.sieve.swap_frac")
        self.mask: torch.Tensor | None = None

    def before_task(self, task):
        self.mask = None

    def active_samples(self, n):
        if self.mask is None:
            device = self.method.seen_mask.device
            order = torch.randperm(n).to(device)
            keep = max(1, round(self.keep_frac * n))
            self.mask = torch.zeros(n, dtype=torch.bool, device=device)
            self.mask[order[:keep]] = True
            self.queue = order[keep:]
            self.unseen = len(self.queue)  # initially removed samples not yet back
            self.swap = min(round(self.swap_frac * keep), len(self.queue))
            self.stats = ForgettingEvents(n, device)
            self.every = at_step(self.interval, self.method.task_steps)
            self.step = 0
        return self.mask

    def after_step(self, batch):
        if self.mask is None or not self.swap:
            return
        self.step += 1
        self.stats.record(self.method, batch)
        if self.step % self.every == 0:
            self._sieve()

    def _sieve(self) -> None:
        out = self.stats.easiest(self.mask.nonzero().squeeze(1), self.swap)
        back, self.queue = self.queue[: self.swap], torch.cat([self.queue[self.swap :], out])
        self.mask[out] = False
        self.mask[back] = True
        self.unseen -= self.swap
        if self.unseen <= 0:
            self.queue = self.queue[torch.randperm(len(self.queue)).to(self.queue.device)]
        self.active_version += 1
        self.stats.reset()

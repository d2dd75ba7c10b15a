"""Experience replay."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_bench.methods.base import Method


class ER(Method):
    """Experience Replay (Chaudhry et al., 2019, "On Tiny Episodic Memories in Continual
    Learning"): each step trains on the current batch joined with a batch sampled from
    memory; the current batch then enters memory under the memory's policy."""

    needs_memory = True

    def __init__(self, replay_batch_size: int = 10, **kw):
        super().__init__(**kw)
        self.replay_batch_size = replay_batch_size

    def loss(self, x, y, task_ids):
        n_replay = 0
        if len(self.memory):
            mx, my, mt = self.memory.sample(self.replay_batch_size)
            x, y, task_ids = torch.cat([x, mx]), torch.cat([y, my]), torch.cat([task_ids, mt])
            n_replay = len(my)
        logits = self.forward(x)
        if n_replay and self.memory.wants_losses:  # e.g. carousel's loss-aware swaps
            self.memory.observe_losses(F.cross_entropy(
                logits[-n_replay:].detach(), y[-n_replay:], reduction="none"))
        return self.cross_entropy(logits, y, task_ids)

    def after_step(self, x, y, task_ids):
        self.memory.add(x, y, task_ids)

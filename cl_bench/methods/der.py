"""Dark Experience Replay."""

from __future__ import annotations

import torch.nn.functional as F

from cl_bench.methods.base import Method


class DER(Method):
    """Dark Experience Replay (Buzzega et al., NeurIPS 2020, "Dark Experience for General
    Continual Learning"): memory holds the logits each sample had when it was stored, and
    replay matches them with an MSE term weighted by `alpha`."""

    needs_memory = True

    def __init__(self, replay_batch_size: int = 10, alpha: float = 0.3, **kw):
        super().__init__(**kw)
        self.replay_batch_size = replay_batch_size
        self.alpha = alpha
        self._logits = None

    def loss(self, x, y, task_ids):
        logits = self.forward(x)
        self._logits = logits.detach()
        loss = self.cross_entropy(logits, y, task_ids)
        if len(self.memory):
            mx, _, _, mz = self.memory.sample(self.replay_batch_size, "logits")
            loss = loss + self.alpha * F.mse_loss(self.forward(mx), mz)
        return loss

    def after_step(self, x, y, task_ids):
        self.memory.add(x, y, task_ids, logits=self._logits)

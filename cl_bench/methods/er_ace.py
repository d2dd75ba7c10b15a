"""Experience replay with asymmetric cross-entropy."""

from __future__ import annotations

import torch

from cl_bench.methods.er import ER


class ERACE(ER):
    """ER-ACE (Caccia et al., ICLR 2022, "New Insights on Reducing Abrupt Representation
    Change in Online Continual Learning"): the incoming batch's cross-entropy only spans
    the classes present in that batch, so new classes do not push old logits down; the
    replayed batch uses the usual cross-entropy over all classes."""

    def loss(self, x, y, task_ids):
        logits = self.forward(x)
        present = torch.bincount(y, minlength=logits.shape[1]) > 0
        loss = self.cross_entropy(logits.masked_fill(~present, float("-inf")), y, task_ids)
        if len(self.memory):
            mx, my, mt = self.memory.sample(self.replay_batch_size)
            loss = loss + self.cross_entropy(self.forward(mx), my, mt)
        return loss

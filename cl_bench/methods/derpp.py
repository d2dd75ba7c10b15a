"""DER++: logit replay plus label replay."""

from __future__ import annotations

from cl_bench.methods.der import DER


class DERpp(DER):
    """DER++ (Buzzega et al., NeurIPS 2020): DER's logit-matching term plus a
    cross-entropy term, weighted by `beta`, on a second, independently drawn memory batch."""

    def __init__(self, beta: float = 0.5, **kw):
        super().__init__(**kw)
        self.beta = beta

    def loss(self, x, y, task_ids):
        loss = super().loss(x, y, task_ids)
        if len(self.memory):
            mx, my, mt = self.memory.sample(self.replay_batch_size)
            loss = loss + self.beta * self.cross_entropy(self.forward(mx), my, mt)
        return loss

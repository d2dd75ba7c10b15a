"""DER++: logit replay plus label replay."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from cl_bench.methods.der import DER, DERConf
from cl_bench.schemas import schema


@schema("method", "derpp")
@dataclass
class DERppConf(DERConf):
    beta: float = 0.5  # weight of the replayed-label CE term


class DERpp(DER):
    """DER++ (Buzzega et al., NeurIPS 2020): DER's logit-matching term plus a
    cross-entropy term, weighted by `beta`, on a second, independently drawn memory batch."""

    def __init__(self, beta: float = 0.5, **kw):
        super().__init__(**kw)
        self.beta = beta

    def loss(self, batch):
        terms = super().loss(batch)
        if len(self.memory):
            replayed = self.replay(self.replay_batch_size)
            logits = self.forward(replayed.x)
            if replayed.index is not None:
                self.report_losses(replayed, F.cross_entropy(logits.detach(), replayed.y,
                                                             reduction="none"))
            terms["label_replay"] = self.beta * self.cross_entropy(logits, replayed.y,
                                                                   replayed.task)
        return terms

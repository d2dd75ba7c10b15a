"""DER++: logit replay plus label replay."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.methods.der import DER, DERConf
from cl_bench.schemas import schema


@schema("method", "derpp")
@dataclass
class DERppConf(DERConf):
    beta: float = 0.5  # weight of the replayed-label CE term


class DERpp(DER):
    """DER++ (Buzzega et al., NeurIPS 2020): DER's logit-matching term plus a
    cross-entropy term, weighted by `beta`, on a second, independently drawn memory batch."""

    stability_knobs = ("alpha", "beta")

    def __init__(self, beta: float = 0.5, **kw):
        super().__init__(**kw)
        self.beta = beta

    def loss(self, batch):
        terms = super().loss(batch)
        if len(self.memory):
            replayed = self.replay(self.replay_batch_size)
            logits = self.forward(replayed.x)
            self.report_ce(replayed, logits)
            terms["label_replay"] = self.beta * self.cross_entropy(logits, replayed.y,
                                                                   replayed.task)
        return terms

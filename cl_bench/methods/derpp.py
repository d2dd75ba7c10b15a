"""DER++: logit replay plus label replay."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.methods.der import DER, DERConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "derpp")
@dataclass
class DERppConf(DERConf):
    # the preset's value (GCR's official code's DER++ defaults; conf/method/derpp.yaml
    # before the schema held it), not DER's 0.3
    alpha: float = 0.1
    beta: float = 0.5  # weight of the replayed-label CE term


@defaults_from(DERppConf)
class DERpp(DER):
    """DER++ (Buzzega et al., NeurIPS 2020): DER's logit-matching term plus a
    cross-entropy term, weighted by `beta`, on a second, independently drawn memory batch."""

    stability_knobs = ("alpha", "beta")

    def __init__(self, beta: float, **kw):
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

"""Dark Experience Replay."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from cl_bench.data.batch import Batch
from cl_bench.methods.er import ER, ReplayConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "der")
@dataclass
class DERConf(ReplayConf):
    alpha: float = 0.3  # weight of the logit-matching (MSE) term


@defaults_from(DERConf)
class DER(ER):
    """Dark Experience Replay (Buzzega et al., NeurIPS 2020, "Dark Experience for General
    Continual Learning"): memory holds the logits each sample had when it was stored, and
    replay matches them with an MSE term weighted by `alpha`."""

    stability_knobs = ("alpha",)

    def __init__(self, alpha: float, **kw):
        super().__init__(**kw)
        self.alpha = alpha

    def loss(self, batch):
        logits = self.forward(batch.x)
        terms = {"ce": self.cross_entropy(logits, batch.y, batch.task)}
        if len(self.memory):
            replayed = self.replay(self.replay_batch_size, "logits")
            out = self.forward(replayed.x)
            if replayed.index is not None:
                self.report_losses(replayed, (out.detach() - replayed.logits).pow(2).mean(1))
            terms["logit_replay"] = self.alpha * F.mse_loss(out, replayed.logits)
        return terms

    def after_step(self, batch):
        self.memory.add(Batch(batch.x, batch.y, batch.task, {"logits": self.batch_logits(batch)}))

"""Experience replay with asymmetric cross-entropy."""

from __future__ import annotations

import torch

from cl_bench.methods.er import ER


class ERACE(ER):
    """ER-ACE (Caccia et al., ICLR 2022, "New Insights on Reducing Abrupt Representation
    Change in Online Continual Learning"): the incoming batch's cross-entropy only spans
    the classes present in that batch, so new classes do not push old logits down; the
    replayed batch uses the usual cross-entropy over all classes."""

    def loss(self, batch):
        logits = self.forward(batch.x)
        present = torch.bincount(batch.y, minlength=logits.shape[1]) > 0
        terms = {"ce": self.cross_entropy(logits.masked_fill(~present, float("-inf")),
                                          batch.y, batch.task)}
        if len(self.memory):
            replayed = self.replay(self.replay_batch_size)
            out = self.forward(replayed.x)
            self.report_ce(replayed, out)
            terms["replay"] = self.cross_entropy(out, replayed.y, replayed.task)
        return terms

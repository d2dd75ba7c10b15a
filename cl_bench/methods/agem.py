"""Averaged Gradient Episodic Memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.methods.er import ER, ReplayConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "agem")
@dataclass
class AGEMConf(ReplayConf):
    # the reference batch g_ref is drawn from: 64 since the seq-MNIST presets were added
    # (README seq-MNIST table); Chaudhry et al. draw 256 (their code's default)
    replay_batch_size: int = 64


@defaults_from(AGEMConf)
class AGEM(ER):
    """A-GEM (Chaudhry et al., ICLR 2019, "Efficient Lifelong Learning with A-GEM"): when
    the gradient g of the current batch conflicts with the gradient g_ref of a memory
    batch (g . g_ref < 0), step along g projected onto the half-space g . g_ref >= 0:
    g - (g . g_ref / g_ref . g_ref) g_ref. Memory is filled as in ER."""

    def loss(self, batch):
        return {"ce": self.cross_entropy(self.forward(batch.x), batch.y, batch.task)}

    def after_backward(self, batch):
        if not len(self.memory):
            return
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        replayed = self.replay(self.replay_batch_size)
        logits = self.forward(replayed.x)
        self.report_ce(replayed, logits)
        ref = torch.autograd.grad(self.cross_entropy(logits, replayed.y, replayed.task), params)
        dot = sum((p.grad * r).sum() for p, r in zip(params, ref, strict=True))
        ref_sq = sum((r * r).sum() for r in ref)
        coef = dot.clamp(max=0) / ref_sq.clamp(min=1e-12)  # 0 when there is no conflict
        for p, r in zip(params, ref, strict=True):
            p.grad.sub_(coef * r)

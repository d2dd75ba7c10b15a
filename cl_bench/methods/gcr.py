"""Gradient Coreset Replay."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_bench.methods.derpp import DERpp


class GCR(DERpp):
    """GCR (Tiwari et al., CVPR 2022, "GCR: Gradient Coreset Based Replay Buffer Selection
    for Continual Learning"): DER++ losses in which every replayed sample's term is
    weighted by its coreset weight (normalised by the batch's weight sum); at the end of
    each task the `coreset` memory re-selects its samples so their weighted last-layer
    gradients of the replay loss (beta * CE + alpha * MSE to stored logits) match those
    of everything it represents."""

    def __init__(self, **kw):
        super().__init__(**kw)
        if not hasattr(self.memory, "consolidate"):
            raise ValueError("method=gcr needs memory=coreset (weighted gradient coreset)")

    def loss(self, x, y, task_ids):
        logits = self.forward(x)
        self._logits = logits.detach()
        loss = self.cross_entropy(logits, y, task_ids)
        if len(self.memory):
            mx, _, _, mz, mw = self.memory.sample(self.replay_batch_size, "logits", "weight")
            mse = (self.forward(mx) - mz).pow(2).mean(1)
            loss = loss + self.alpha * (mw * mse).sum() / mw.sum()
            mx, my, mt, mw = self.memory.sample(self.replay_batch_size, "weight")
            ce = self.per_sample_ce(self.forward(mx), my, mt)
            loss = loss + self.beta * (mw * ce).sum() / mw.sum()
        return loss

    def per_sample_ce(self, logits, y, task_ids):
        if self.scenario == "task_il":
            logits = logits.masked_fill(~self.class_mask[task_ids], float("-inf"))
        return F.cross_entropy(logits, y, reduction="none")

    def after_task(self, task):
        self.model.eval()
        with torch.no_grad():
            self.memory.consolidate(self.gradient_embedding, task.id + 1)
        self.model.train()

    def gradient_embedding(self, rows: dict) -> torch.Tensor:
        """Per-sample gradient of the replay loss w.r.t. the head (bias, then weight)."""
        feats = self.model.features(self.preprocess(rows["x"]))
        logits = self.model.head(feats)
        n_classes = logits.shape[1]
        g = self.beta * (logits.softmax(1) - F.one_hot(rows["y"], n_classes)) \
            + self.alpha * 2 * (logits - rows["logits"]) / n_classes
        return torch.cat([g, (g.unsqueeze(2) * feats.unsqueeze(1)).flatten(1)], 1)

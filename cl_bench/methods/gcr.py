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

    memory_needs = frozenset({"add", "sample", "consolidate", "weights"})
    supported_streams = ("task", "online", "blurry")  # its coreset is rebuilt in after_task
    memory_hint = "choose memory=coreset (weighted gradient coreset)"

    def loss(self, batch):
        logits = self.forward(batch.x)
        terms = {"ce": self.cross_entropy(logits, batch.y, batch.task)}
        if len(self.memory):
            replayed = self.replay(self.replay_batch_size, "logits", "weight")
            mse = (self.forward(replayed.x) - replayed.logits).pow(2).mean(1)
            self.report_losses(replayed, mse)
            w = replayed.weight
            terms["logit_replay"] = self.alpha * (w * mse).sum() / w.sum()
            replayed = self.replay(self.replay_batch_size, "weight")
            ce = self.per_sample_ce(self.forward(replayed.x), replayed.y, replayed.task)
            self.report_losses(replayed, ce)
            w = replayed.weight
            terms["label_replay"] = self.beta * (w * ce).sum() / w.sum()
        return terms

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

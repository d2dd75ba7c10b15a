"""Experience replay with separated softmax."""

import torch

from cl_bench.methods.er import ER


class ERSS(ER):
    """Separated-softmax replay (the softmax of SS-IL, Ahn et al., ICCV 2021, without its
    task-wise distillation): the current batch's cross-entropy spans only the current
    task's classes and replayed samples of earlier tasks span only the earlier tasks'
    classes, so learning new classes does not push the old logits down."""

    supported_scenarios = ("class_il",)
    # the current task is the batch's first sample's, and old classes are the earlier tasks'
    supported_streams = ("task", "online")

    def loss(self, batch):
        current = self.class_mask[batch.task[0]]
        logits = self.forward(batch.x).masked_fill(~current, float("-inf"))
        terms = {"ce": self.cross_entropy(logits, batch.y, batch.task)}
        if len(self.memory):
            replayed = self.replay(self.replay_batch_size)
            # samples of the current task already in memory: over every class seen
            now = (replayed.task == batch.task[0]).unsqueeze(1)
            allowed = torch.where(now, self.seen_mask, self.old_mask)
            old = self.forward(replayed.x).masked_fill(~allowed, float("-inf"))
            terms["replay"] = self.cross_entropy(old, replayed.y, replayed.task)
        return terms
